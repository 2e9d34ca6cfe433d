//! Model families, one file each. Every file cites the paper and the reference
//! PyTorch file it reproduces; its `Config` has named constructors for the
//! paper's variants, can describe reduced-width instances for tests, and has a
//! `thinned(d)` method that divides every channel count by a width divisor
//! (see [`div_ceil_multiple`] and `ModelOptions::width_divisor`).

pub mod alexnet;
pub mod cnn;
pub mod densenet;
pub mod googlenet;
pub mod mobilenet_v2;
pub mod resnet;
pub mod resnext;
pub mod shufflenet_v2;
pub mod tv_densenet;
pub mod tv_resnet;
pub mod vgg;
pub mod wrn;

/// The channel count `c` scaled down by the width divisor `d`: `⌈c / d⌉`,
/// rounded up to a multiple of `multiple` (groups, cardinality, an even split),
/// and never below `multiple` (so at least 1).
///
/// The one scaling rule of every family's `thinned(d)`. `d = 1` leaves a count
/// that is already a multiple of `multiple` unchanged. A `d` or `multiple` of 0
/// is treated as 1 (the registry rejects a width divisor of 0 with
/// [`crate::ZooError::InvalidConfig`] before any builder runs), so this never
/// panics.
///
/// ```
/// use tfkd_zoo::models::div_ceil_multiple;
/// assert_eq!(div_ceil_multiple(116, 8, 2), 16); // ⌈14.5⌉ = 15 → even
/// assert_eq!(div_ceil_multiple(256, 16, 32), 32); // 16 → a multiple of 32 groups
/// assert_eq!(div_ceil_multiple(16, 32, 1), 1); // at least 1
/// assert_eq!(div_ceil_multiple(64, 1, 1), 64);
/// ```
pub fn div_ceil_multiple(c: usize, d: usize, multiple: usize) -> usize {
    let m = multiple.max(1);
    c.div_ceil(d.max(1)).div_ceil(m).max(1) * m
}
