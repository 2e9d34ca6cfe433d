//! Planar (C, H, W) u8 images: the unit every reader produces and every transform consumes.

use std::borrow::Cow;

/// A planar u8 image: `channels` planes of `height` rows of `width` bytes, row-major,
/// i.e. the CIFAR binary layout and the (C, H, W) layout of the final tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<'a> {
    /// Number of channels (1 or 3).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` bytes, planar.
    pub data: Cow<'a, [u8]>,
}

impl<'a> Image<'a> {
    /// An image borrowing `data`, which must hold `channels * height * width` bytes.
    pub fn borrowed(channels: usize, height: usize, width: usize, data: &'a [u8]) -> Self {
        debug_assert_eq!(data.len(), channels * height * width);
        Image { channels, height, width, data: Cow::Borrowed(data) }
    }

    /// An image owning `data`, which must hold `channels * height * width` bytes.
    pub fn owned(channels: usize, height: usize, width: usize, data: Vec<u8>) -> Image<'static> {
        debug_assert_eq!(data.len(), channels * height * width);
        Image { channels, height, width, data: Cow::Owned(data) }
    }

    /// The shape as (channels, height, width).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// One channel plane.
    pub fn plane(&self, c: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// Converts interleaved RGB (HWC, as decoders return it) to a planar image.
    pub fn from_interleaved(height: usize, width: usize, channels: usize, hwc: &[u8]) -> Image<'static> {
        let n = height * width;
        let mut data = vec![0u8; n * channels];
        for (p, px) in hwc.chunks_exact(channels).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[c * n + p] = v;
            }
        }
        Image::owned(channels, height, width, data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> Image<'static> {
        Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}
