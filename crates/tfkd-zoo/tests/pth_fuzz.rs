//! The `.pth` reader on hostile input (issue 17): random bytes, and
//! truncated and bit-flipped copies of valid checkpoints in both formats
//! (zip, PyTorch ≥ 1.6; legacy, PyTorch ≤ 1.5), must give a tensor list or a
//! named [`ZooError::InvalidPth`], never a panic or a hang.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::fixture_dir;
use proptest::prelude::*;
use tfkd_zoo::pth::read_pth_bytes;
use tfkd_zoo::ZooError;

/// A parse that takes longer than this counts as a hang.
const HANG: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The two formats: the zip archive and the legacy stream.
fn valid() -> [Vec<u8>; 2] {
    [fixture("ckpt_resnet_basic.pth.tar"), fixture("ckpt_resnet_basic_legacy.pth.tar")]
}

/// Parses `bytes` on another thread; fails on a panic, a hang or an error
/// other than [`ZooError::InvalidPth`]. Returns whether the bytes parsed.
fn parse(bytes: Vec<u8>) -> Result<bool, TestCaseError> {
    let (tx, rx) = mpsc::channel();
    let len = bytes.len();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| read_pth_bytes(&bytes).map(|t| t.len()).map_err(Box::new));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(HANG) {
        Err(_) => Err(TestCaseError::fail(format!("no result after {HANG:?} on {len} bytes"))),
        Ok(Err(_)) => Err(TestCaseError::fail(format!("panic on {len} bytes"))),
        Ok(Ok(Ok(_))) => Ok(true),
        Ok(Ok(Err(e))) => match *e {
            ZooError::InvalidPth { reason } => {
                prop_assert!(!reason.is_empty());
                Ok(false)
            }
            e => Err(TestCaseError::fail(format!("not an InvalidPth error: {e:?}"))),
        },
    }
}

#[test]
fn the_valid_fixtures_parse() {
    for bytes in valid() {
        assert!(matches!(parse(bytes), Ok(true)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes, with and without a format's leading magic bytes.
    #[test]
    fn random_bytes_are_an_error(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        prefix in 0usize..3,
    ) {
        let head: &[u8] = match prefix {
            0 => b"",
            1 => &[0x50, 0x4b, 0x03, 0x04],
            _ => &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e],
        };
        bytes.splice(0..0, head.iter().copied());
        prop_assert!(!parse(bytes)?);
    }

    /// A valid file cut anywhere.
    #[test]
    fn truncated_files_do_not_panic(format in 0usize..2, cut in any::<prop::sample::Index>()) {
        let mut bytes = valid()[format].clone();
        let keep = cut.index(bytes.len());
        bytes.truncate(keep);
        // The zip reader finds the end record near the end, so most cuts fail;
        // a cut legacy stream always misses storage bytes.
        parse(bytes)?;
    }

    /// A valid file with a few bits flipped (in the headers, pickle streams or data).
    #[test]
    fn bit_flipped_files_do_not_panic(
        format in 0usize..2,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
    ) {
        let mut bytes = valid()[format].clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        parse(bytes)?;
    }

    /// Flips concentrated in the zip archive's directory records and the
    /// legacy stream's leading pickles, where the offsets and lengths live.
    #[test]
    fn corrupted_headers_do_not_panic(
        format in 0usize..2,
        flips in proptest::collection::vec((0usize..400, 0u8..8), 1..6),
    ) {
        let mut bytes = valid()[format].clone();
        let n = bytes.len();
        for (at, bit) in flips {
            let i = if format == 0 { n - 1 - at.min(n - 1) } else { at.min(n - 1) };
            bytes[i] ^= 1 << bit;
        }
        parse(bytes)?;
    }
}
