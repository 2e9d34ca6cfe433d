//! Shared by the tests of the CPU ops: a convolution problem, and the
//! comparison of a result with its reference.

// Each test crate uses part of this module.
#![allow(dead_code)]

use candle_core::{DType, Tensor};

/// All elements of `t` as f64, flattened.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Largest absolute difference relative to the reference's largest
/// magnitude; NaN where a difference is NaN (`f64::max` would skip it), so
/// that `err <= tol` fails on it.
pub fn rel_err(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    let worst = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0f64, |m, d| if d.is_nan() { d } else { m.max(d) });
    worst / scale
}

/// A conv2d problem: batch, channels, spatial size, kernel, stride, padding, groups.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}
