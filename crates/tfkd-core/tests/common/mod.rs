//! Shared by the convolution tests: one convolution problem.

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
