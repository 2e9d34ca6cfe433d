//! Shared by the tests of the CPU ops: a convolution problem, and the
//! comparison of a result with its reference.

// Each test crate uses part of this module.
#![allow(dead_code)]

use candle_core::{DType, Tensor};

/// All elements of `t` as f64, flattened.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Largest absolute difference relative to the reference's largest magnitude.
pub fn rel_err(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
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
