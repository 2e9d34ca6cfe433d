//! A seedable, serialisable random number generator for everything random in
//! tfkd: weight initialisation, shuffling, augmentation and dropout.
//!
//! candle's CPU backend cannot be seeded (`Device::set_seed` bails, candle#2651),
//! so tfkd draws all random numbers on the host from [`SeededRng`] (ChaCha8: a
//! fixed algorithm, so a seed gives the same stream on every platform and every
//! future version) and uploads the result to the target device.
//!
//! [`SeededRng::derive`] gives independent streams keyed by a path such as
//! `[epoch, sample_index]`: a sample's augmentation then depends only on the
//! seed, the epoch and the sample, never on which thread drew it first.

use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// FNV-1a (64-bit) of `text`: a hash that is the same on every platform and
/// Rust version, to name streams and runs by their content.
pub fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A ChaCha8 generator with a reproducible seed and a saveable position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

/// The full state of a [`SeededRng`], enough to resume its stream exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key.
    pub key: [u8; 32],
    /// The ChaCha stream id.
    pub stream: u64,
    /// Position in the stream, in 32-bit words: high 64 bits.
    pub word_pos_hi: u64,
    /// Position in the stream, in 32-bit words: low 64 bits.
    pub word_pos_lo: u64,
}

/// SplitMix64's increment γ (the golden ratio in 64-bit fixed point).
const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: a bijective mixer, used to spread seeds and paths over the key
/// and, stepped by [`SPLITMIX_GAMMA`], as the [`MaskRng`] stream.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(SPLITMIX_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SeededRng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self::derive(seed, &[])
    }

    /// An independent generator for the stream named `name` under `seed`:
    /// `derive(seed, &[fnv1a(name)])`.
    pub fn named(seed: u64, name: &str) -> Self {
        Self::derive(seed, &[fnv1a(name)])
    }

    /// An independent generator for `path` under `seed`, e.g.
    /// `derive(seed, &[epoch, sample])`. Different paths give unrelated streams.
    pub fn derive(seed: u64, path: &[u64]) -> Self {
        let mut key = [0u8; 32];
        let mut h = splitmix64(seed);
        let mut words = [h, 0, 0, 0];
        // Chain the path through the mixer, then fill the key from the chain.
        h = splitmix64(h ^ path.len() as u64);
        for &p in path {
            h = splitmix64(h ^ splitmix64(p));
        }
        for w in words.iter_mut().skip(1) {
            h = splitmix64(h);
            *w = h;
        }
        for (chunk, w) in key.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Self { inner: ChaCha8Rng::from_seed(key) }
    }

    /// The generator's current state.
    pub fn state(&self) -> RngState {
        let pos = self.inner.get_word_pos();
        RngState {
            key: self.inner.get_seed(),
            stream: self.inner.get_stream(),
            word_pos_hi: (pos >> 64) as u64,
            word_pos_lo: pos as u64,
        }
    }

    /// A generator that continues exactly where `state` was taken.
    pub fn from_state(state: &RngState) -> Self {
        let mut inner = ChaCha8Rng::from_seed(state.key);
        inner.set_stream(state.stream);
        inner.set_word_pos(((state.word_pos_hi as u128) << 64) | state.word_pos_lo as u128);
        Self { inner }
    }

    /// A uniform sample in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.inner.random::<f64>()
    }

    /// A uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        self.inner.random_range(0..n)
    }

    /// A sample of N(mean, std²).
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let z: f64 = StandardNormal.sample(&mut self.inner);
        mean + std * z
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }

    /// A tensor of uniform samples in `[lo, hi)`, drawn on the host.
    pub fn uniform_tensor(
        &mut self,
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(Error::InvalidParameter {
                name: "uniform bounds",
                value: hi - lo,
                expected: format!("finite lo <= hi, got lo = {lo}, hi = {hi}"),
            });
        }
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.elem_count()).map(|_| self.uniform(lo, hi)).collect();
        host_tensor(data, shape, dtype, device)
    }

    /// A tensor of N(mean, std²) samples, drawn on the host.
    pub fn normal_tensor(
        &mut self,
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        crate::error::check_param("std", std, std >= 0.0, "must be >= 0")?;
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.elem_count()).map(|_| self.normal(mean, std)).collect();
        host_tensor(data, shape, dtype, device)
    }
}

/// The dropout-mask generator: a SplitMix64 stream (the sequence
/// `splitmix64(seed + i·γ)`), cheap enough to draw one number per activation.
///
/// One generator is shared by all dropout layers of a model and consumed in
/// forward order; [`MaskRng::new`] with the same seed replays the same masks.
/// Its stream is fixed (the trained numbers of the zoo depend on it), so it
/// is separate from [`SeededRng`]'s ChaCha8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRng {
    state: u64,
}

impl MaskRng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator's state: `MaskRng::new(rng.state())` continues the
    /// stream exactly where `rng` is (what a mid-epoch checkpoint stores).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let z = splitmix64(self.state);
        self.state = self.state.wrapping_add(SPLITMIX_GAMMA);
        z
    }

    /// A uniform sample in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// An inverted-dropout mask, as `torch.nn.functional.dropout` scales it:
    /// element i is kept (`1/(1−p)`) when the i-th draw `u ∈ [0, 1)` of
    /// [`MaskRng::next_f32`] satisfies `u ≥ p` (p rounded to f32), else 0.
    /// The scale is computed in f64 for an f64 mask and in f32 otherwise.
    /// Drawn on the host (candle's CPU RNG cannot be seeded, candle#2651)
    /// and copied to `device`.
    pub fn dropout_mask(
        &mut self,
        shape: impl Into<Shape>,
        p: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        crate::error::check_param("dropout probability", p, (0.0..1.0).contains(&p), "must be in [0, 1)")?;
        let shape = shape.into();
        let n = shape.elem_count();
        let p32 = p as f32;
        if dtype == DType::F64 {
            let keep = 1.0 / (1.0 - p);
            let data: Vec<f64> = (0..n).map(|_| if self.next_f32() >= p32 { keep } else { 0.0 }).collect();
            return Ok(Tensor::from_vec(data, shape, device)?);
        }
        let keep = 1.0 / (1.0 - p32);
        let data: Vec<f32> = (0..n).map(|_| if self.next_f32() >= p32 { keep } else { 0.0 }).collect();
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    }
}

fn host_tensor(data: Vec<f64>, shape: Shape, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.inner.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_paths_differ() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = SeededRng::derive(7, &[0, 1]);
        let mut d = SeededRng::derive(7, &[1, 0]);
        let mut e = SeededRng::derive(8, &[0, 1]);
        let (c0, d0, e0) = (c.next_u64(), d.next_u64(), e.next_u64());
        assert_ne!(c0, d0);
        assert_ne!(c0, e0);
        assert_ne!(xs[0], c0);
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let mut a = SeededRng::new(3);
        for _ in 0..37 {
            a.next_u32();
        }
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut b = SeededRng::from_state(&serde_json::from_str(&json).unwrap());
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut r = SeededRng::new(1);
        let mut p = r.permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn distributions_have_the_right_moments() -> Result<()> {
        let mut r = SeededRng::new(11);
        let n = 20_000;
        let u = r.uniform_tensor(n, -2.0, 4.0, DType::F64, &Device::Cpu)?.to_vec1::<f64>()?;
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.05, "uniform mean {mean}");
        assert!(u.iter().all(|x| (-2.0..4.0).contains(x)));
        let g = r.normal_tensor(n, 1.0, 3.0, DType::F64, &Device::Cpu)?.to_vec1::<f64>()?;
        let m = g.iter().sum::<f64>() / n as f64;
        let var = g.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 1.0).abs() < 0.1 && (var.sqrt() - 3.0).abs() < 0.1, "normal {m} {var}");
        let mut r = MaskRng::new(11);
        let d = r.dropout_mask(n, 0.25, DType::F64, &Device::Cpu)?.to_vec1::<f64>()?;
        let dropped = d.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropout rate {dropped}");
        assert!(d.iter().all(|&x| x == 0.0 || (x - 4.0 / 3.0).abs() < 1e-12));
        assert!(r.dropout_mask(3, 1.0, DType::F32, &Device::Cpu).is_err());
        Ok(())
    }

    #[test]
    fn mask_rng_is_the_splitmix64_stream() {
        // The reference SplitMix64 outputs for seed 0 (Vigna's splitmix64.c).
        let mut r = MaskRng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut a = MaskRng::new(230);
        let mut b = a.clone();
        let m = a.dropout_mask((4, 5), 0.5, DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap();
        let expected: Vec<f32> = (0..20).map(|_| if b.next_f32() >= 0.5 { 2.0 } else { 0.0 }).collect();
        assert_eq!(m.to_vec1::<f32>().unwrap(), expected);
    }
}
