//! Property tests of every reader of tfkd-data (issue 17): random bytes, and truncated,
//! bit-flipped and overwritten versions of valid inputs. The outcome is always `Ok` (an input
//! that happens to be valid, then checked for consistency) or a `DataError` whose message names
//! the file it is about; never a panic. Case counts keep the whole file well under 30 s
//! (about 2 s); `TFKD_FUZZ_SCALE=N` multiplies them for a longer search.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use tfkd_data::download::{self, ArchiveKind, Remote, Silent, COMPLETE_MARKER};
use tfkd_data::folder::decode_rgb_bytes;
use tfkd_data::records::{parse_records, RecordFormat};
use tfkd_data::{DataError, ImageDataset, ImageFolder, Source, Split};

/// How a valid input is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep the first `n mod (len + 1)` bytes.
    Truncate(usize),
    /// Flip bit `b` of byte `i mod len`, for each pair.
    Flip(Vec<(usize, u8)>),
    /// Overwrite bytes from `i mod len` with these.
    Overwrite(usize, Vec<u8>),
    /// Flip bits, then truncate.
    FlipTruncate(Vec<(usize, u8)>, usize),
    /// Replace everything by random bytes.
    Random(Vec<u8>),
}

fn mutation(max_random: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        vec((any::<usize>(), 0u8..8), 1..16).prop_map(Mutation::Flip),
        (any::<usize>(), vec(any::<u8>(), 1..64)).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (vec((any::<usize>(), 0u8..8), 1..8), any::<usize>()).prop_map(|(f, n)| Mutation::FlipTruncate(f, n)),
        vec(any::<u8>(), 0..max_random).prop_map(Mutation::Random),
    ]
}

fn flip(bytes: &mut [u8], flips: &[(usize, u8)]) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    for &(i, b) in flips {
        bytes[i % n] ^= 1 << b;
    }
}

fn apply(valid: &[u8], m: &Mutation) -> Vec<u8> {
    let mut v = valid.to_vec();
    match m {
        Mutation::Truncate(n) => v.truncate(n % (valid.len() + 1)),
        Mutation::Flip(f) => flip(&mut v, f),
        Mutation::Overwrite(i, b) => {
            if !v.is_empty() {
                let start = i % v.len();
                for (k, &x) in b.iter().enumerate() {
                    if let Some(o) = v.get_mut(start + k) {
                        *o = x;
                    }
                }
            }
        }
        Mutation::FlipTruncate(f, n) => {
            flip(&mut v, f);
            v.truncate(n % (valid.len() + 1));
        }
        Mutation::Random(r) => v = r.clone(),
    }
    v
}

/// Counts the outcomes of a property, so that a test can check it exercised both.
#[derive(Default)]
struct Outcomes {
    ok: std::sync::atomic::AtomicUsize,
    err: std::sync::atomic::AtomicUsize,
}

impl Outcomes {
    fn record<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.ok } else { &self.err };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    /// Both valid and refused inputs were seen (else the property tested only one side).
    fn assert_both(&self, what: &str) {
        let (ok, err) = (self.ok.load(std::sync::atomic::Ordering::Relaxed), self.err.load(std::sync::atomic::Ordering::Relaxed));
        assert!(ok > 0 && err > 0, "{what}: {ok} accepted, {err} refused");
    }
}

/// `cases` times `TFKD_FUZZ_SCALE` (default 1; raise it for a longer search).
fn runner(cases: u32) -> TestRunner {
    let scale = std::env::var("TFKD_FUZZ_SCALE").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(1).max(1);
    // No regression files are written into the crate; a failure prints the minimal input.
    TestRunner::new(Config { cases: cases.saturating_mul(scale), failure_persistence: None, ..Config::default() })
}

/// `Err` must name `what` (a file or folder name); `Ok` is checked by the caller.
fn named<T>(r: &Result<T, DataError>, what: &str) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let msg = e.to_string();
        prop_assert!(msg.contains(what), "error does not name {what}: {msg}");
    }
    Ok(())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join(name)).unwrap()
}

fn check_dataset(ds: &ImageDataset, bytes: usize, format: &RecordFormat) -> Result<(), TestCaseError> {
    prop_assert!(!ds.is_empty());
    prop_assert_eq!(ds.len() * format.record_size(), bytes);
    prop_assert_eq!(ds.shape(), format.shape);
    prop_assert!(ds.labels().iter().all(|&l| (l as usize) < ds.num_classes()));
    prop_assert!(ds.images().iter().all(|&p| p <= format.pixel_max));
    for i in 0..ds.len() {
        ds.image(i).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    Ok(())
}

/// A fixed-record format on bytes: `parse_records` directly.
fn records_property(valid: &[u8], format: &RecordFormat, cases: u32) {
    let path = Path::new("fuzz/records.bin");
    let seen = Outcomes::default();
    runner(cases)
        .run(&mutation(4 * format.record_size()), |m| {
            let bytes = apply(valid, &m);
            let r = parse_records(path, &bytes, format, None);
            seen.record(&r);
            named(&r, "records.bin")?;
            if let Ok(ds) = &r {
                check_dataset(ds, bytes.len(), format)?;
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both("records");
}

#[test]
fn cifar10_records_never_panic() {
    let valid = fixture("cifar10_test_first20.bin");
    assert!(ImageDataset::read_cifar10_bin(common::fixtures().join("cifar10_test_first20.bin")).is_ok());
    records_property(&valid, &RecordFormat::cifar10(), 1024);
}

#[test]
fn cifar100_records_never_panic() {
    let valid = fixture("cifar100_test_first20.bin");
    records_property(&valid, &RecordFormat::cifar100(), 1024);
    // Coarse labels stay aligned with the fine ones whatever survives.
    runner(64)
        .run(&mutation(64), |m| {
            let bytes = apply(&valid, &m);
            if let Ok(ds) = parse_records(Path::new("c100.bin"), &bytes, &RecordFormat::cifar100(), None) {
                let coarse = ds.coarse_labels().unwrap_or_default();
                prop_assert_eq!(coarse.len(), ds.len());
                prop_assert!(coarse.iter().all(|&c| c < 20));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn digits_records_never_panic() {
    let valid = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits/test.bin")).unwrap();
    assert!(parse_records(Path::new("d"), &valid, &RecordFormat::digits(), None).is_ok());
    records_property(&valid, &RecordFormat::digits(), 1024);
}

#[test]
fn tiny_imagenet_10_records_never_panic() {
    // Two synthetic 64x64 records (no fixture at this size; the layout is CIFAR-10's).
    let format = RecordFormat::tiny_imagenet_10();
    let mut valid = Vec::new();
    for r in 0..2u8 {
        valid.push(r + 3);
        valid.extend((0..format.record_size() - 1).map(|i| (i as u8).wrapping_mul(7).wrapping_add(r)));
    }
    records_property(&valid, &format, 512);
}

/// The split readers through files on disk, with their metadata files damaged too.
#[test]
fn split_readers_with_damaged_files_and_metadata_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let c10 = fixture("cifar10_test_first20.bin");
    let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec();
    let tsv = b"label\twnid\twords\tname\n0\tn01443537\tgoldfish\tgoldfish\n1\tn1\ta\tb\n2\tn2\ta\tb\n3\tn3\ta\tb\n4\tn4\ta\tb\n5\tn5\ta\tb\n6\tn6\ta\tb\n7\tn7\ta\tb\n8\tn8\ta\tb\n9\tn9\ta\tb\n".to_vec();
    let mut tiny = Vec::new();
    for r in 0..2u8 {
        tiny.push(r);
        tiny.extend(std::iter::repeat(r).take(3 * 64 * 64));
    }
    runner(256)
        .run(&(mutation(256), mutation(256), any::<bool>()), |(mb, mm, train)| {
            let split = if train { Split::Train } else { Split::Test };
            let file = if train { "train.bin" } else { "test.bin" };
            std::fs::write(dir.path().join(file), apply(&c10, &mb)).unwrap();
            std::fs::write(dir.path().join("batches.meta.txt"), apply(&meta, &mm)).unwrap();
            let r = ImageDataset::cifar10_mini(dir.path(), split);
            // A record-file error names the file; a metadata error names batches.meta.txt.
            if let Err(e) = &r {
                let msg = e.to_string();
                prop_assert!(msg.contains(file) || msg.contains("batches.meta.txt"), "{msg}");
            }
            let tiny_file = if train { "train.bin" } else { "val.bin" };
            std::fs::write(dir.path().join(tiny_file), apply(&tiny, &mb)).unwrap();
            std::fs::write(dir.path().join("classes.tsv"), apply(&tsv, &mm)).unwrap();
            let r = ImageDataset::tiny_imagenet_10(dir.path(), split);
            if let Err(e) = &r {
                let msg = e.to_string();
                prop_assert!(msg.contains(tiny_file) || msg.contains("classes.tsv"), "{msg}");
            }
            Ok(())
        })
        .unwrap();
}

fn encoded(format: image::ImageFormat, grey: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if grey {
        image::GrayImage::from_fn(20, 12, |x, y| image::Luma([((x * 13) ^ (y * 7)) as u8]))
            .write_to(&mut out, format)
            .unwrap();
    } else {
        image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, ((x ^ y) as u8).wrapping_mul(9)]))
            .write_to(&mut out, format)
            .unwrap();
    }
    out.into_inner()
}

#[test]
fn image_decoder_never_panics_on_damaged_jpeg_and_png() {
    let inputs = [
        encoded(image::ImageFormat::Jpeg, false),
        encoded(image::ImageFormat::Png, false),
        encoded(image::ImageFormat::Png, true),
        encoded(image::ImageFormat::Jpeg, true),
    ];
    for v in &inputs {
        let img = decode_rgb_bytes(Path::new("x"), v).unwrap();
        assert_eq!(img.channels, 3);
    }
    let path = Path::new("fuzz/val_7.JPEG");
    let seen = Outcomes::default();
    runner(2048)
        .run(&(0..inputs.len(), mutation(1024)), |(k, m)| {
            let bytes = apply(&inputs[k], &m);
            let r = decode_rgb_bytes(path, &bytes);
            seen.record(&r);
            named(&r, "val_7.JPEG")?;
            match r {
                Ok(img) => {
                    prop_assert_eq!(img.channels, 3);
                    prop_assert_eq!(img.data.len(), 3 * img.height * img.width);
                }
                Err(e) => prop_assert!(matches!(e, DataError::Decode { .. }), "{e:?}"),
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both("image decoder");
}

fn write_jpeg(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 ^ seed, y as u8, seed]))
        .save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

/// Tiny-ImageNet's layout: `wnids.txt` and `val/val_annotations.txt` damaged, then the
/// images the reader lists decoded.
#[test]
fn tiny_imagenet_layout_with_damaged_metadata_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    let wnids = b"n02\nn01\n".to_vec();
    for (k, w) in ["n01", "n02"].iter().enumerate() {
        write_jpeg(&root.join(format!("train/{w}/images/{w}_0.JPEG")), k as u8 * 50);
    }
    let mut ann = Vec::new();
    for (i, w) in ["n02", "n01", "n01"].iter().enumerate() {
        write_jpeg(&root.join(format!("val/images/val_{i}.JPEG")), i as u8 * 30);
        ann.extend(format!("val_{i}.JPEG\t{w}\t0\t0\t63\t63\n").bytes());
    }
    let ann_path = root.join("val/val_annotations.txt");
    let seen = Outcomes::default();
    runner(512)
        .run(&(mutation(128), mutation(256), any::<bool>()), |(mw, ma, train)| {
            let split = if train { Split::Train } else { Split::Test };
            std::fs::write(root.join("wnids.txt"), apply(&wnids, &mw)).unwrap();
            std::fs::write(&ann_path, apply(&ann, &ma)).unwrap();
            let r = ImageFolder::tiny_imagenet(&root, split);
            seen.record(&r);
            match r {
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(&root.display().to_string()), "{msg}");
                }
                Ok(folder) => {
                    prop_assert!(!folder.is_empty());
                    for (path, label) in folder.samples() {
                        prop_assert!(path.starts_with(&root), "{} escapes the dataset", path.display());
                        prop_assert!((*label as usize) < folder.num_classes());
                    }
                    let r = folder.load_all(64, 64, 1);
                    if let Err(e) = &r {
                        prop_assert!(e.to_string().contains(&root.display().to_string()), "{e}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both("tiny-imagenet layout");
}

fn tar_gz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("ds/test.bin", &fixture("cifar100_test_first20.bin")[..2 * 3074]);
    add("ds/meta/fine_label_names.txt", b"apple\nbee\n");
    tar.into_inner().unwrap().finish().unwrap()
}

fn zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.add_directory("ds/", opts).unwrap();
    w.start_file("ds/wnids.txt", opts).unwrap();
    w.write_all(b"n01\nn02\n").unwrap();
    w.start_file("ds/val/val_annotations.txt", stored).unwrap();
    w.write_all(b"val_0.JPEG\tn01\t0\t0\t1\t1\n").unwrap();
    w.finish().unwrap().into_inner()
}

/// The downloader's extraction (the archive is put in place by hand, so no network): a damaged
/// archive is extracted or refused with an error naming a path under the root, and a refused
/// one never leaves a folder marked complete.
fn archive_property(valid: &[u8], kind: ArchiveKind, file_name: &str, cases: u32) {
    let seen = Outcomes::default();
    runner(cases)
        .run(&mutation(512), |m| {
            let bytes = apply(valid, &m);
            let root = tempfile::tempdir().unwrap();
            std::fs::write(root.path().join(file_name), &bytes).unwrap();
            let remote = Remote {
                name: "fuzz".into(),
                url: "http://127.0.0.1:9/never-contacted".into(),
                file_name: file_name.into(),
                md5: tfkd_data::download::md5_file(&root.path().join(file_name), &mut Silent).unwrap(),
                kind,
                folder: "ds".into(),
            };
            let r = download::ensure(&remote, root.path(), &mut Silent);
            seen.record(&r);
            match r {
                Ok(dir) => {
                    prop_assert_eq!(&dir, &root.path().join("ds"));
                    prop_assert!(dir.join(COMPLETE_MARKER).is_file());
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(&root.path().display().to_string()), "{msg}");
                    prop_assert!(download::complete_folder(&remote, root.path()).is_none());
                    prop_assert!(!matches!(e, DataError::Download { .. }), "the network was tried: {msg}");
                }
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both(file_name);
}

#[test]
fn tar_gz_extraction_never_panics() {
    archive_property(&tar_gz(), ArchiveKind::TarGz, "ds.tar.gz", 768);
}

#[test]
fn zip_extraction_never_panics() {
    archive_property(&zip(), ArchiveKind::Zip, "ds.zip", 768);
}

/// A record layout built by hand (the fields are public) never makes the reader panic: a
/// layout that cannot be read is an `InvalidConfig` error.
#[test]
fn hand_made_record_formats_never_panic() {
    let small = RecordFormat { label_classes: vec![3], main_label: 0, shape: (1, 1, 2), pixel_max: 255 };
    let ds = parse_records(Path::new("small.bin"), &[1, 0, 0, 2, 7, 7], &small, None).unwrap();
    assert_eq!((ds.len(), ds.labels()), (2, &[1u32, 2][..]));
    let seen = Outcomes::default();
    let dims = || prop_oneof![12 => 1usize..4, 1 => Just(0usize), 1 => Just(usize::MAX / 2), 1 => Just(1usize << 32)];
    let format = (vec(prop_oneof![8 => 1usize..300, 1 => Just(0usize)], 0..4), 0usize..3, (dims(), dims(), dims()), prop_oneof![Just(255u8), any::<u8>()])
        .prop_map(|(label_classes, main_label, shape, pixel_max)| RecordFormat { label_classes, main_label, shape, pixel_max });
    // Small byte values and short files make some inputs valid.
    let bytes = prop_oneof![vec(any::<u8>(), 0..512), vec(0u8..3, 0..48)];
    runner(1024)
        .run(&(format, bytes), |(format, bytes)| {
            let r = parse_records(Path::new("fuzz/custom.bin"), &bytes, &format, None);
            seen.record(&r);
            match &r {
                Ok(ds) => check_dataset(ds, bytes.len(), &format)?,
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(
                        msg.contains("custom.bin") || matches!(e, DataError::InvalidConfig { what: "record format", .. }),
                        "{msg}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both("hand-made formats");
}

/// The in-memory constructors (the way in from candle tensors) and sample access never panic,
/// whatever the claimed shape and the index asked for.
#[test]
fn dataset_constructors_and_access_never_panic() {
    use candle_core::{Device, Tensor};
    let seen = Outcomes::default();
    let dim = || prop_oneof![8 => 1usize..5, 1 => Just(0usize), 1 => Just(usize::MAX / 3), 1 => Just(1usize << 33)];
    runner(512)
        .run(&((dim(), dim(), dim()), 0usize..4, vec(0u8..=255, 0..64), any::<usize>(), any::<bool>()), |(shape, n, mut bytes, index, fit)| {
            // Half the cases get exactly the bytes the shape claims (when it
            // is small), so that valid datasets are always among the inputs.
            let claimed = shape.0.checked_mul(shape.1).and_then(|x| x.checked_mul(shape.2)).and_then(|x| x.checked_mul(n));
            if let Some(len) = claimed.filter(|&len| fit && len <= 4096) {
                bytes.resize(len, 7);
            }
            let labels: Vec<u32> = (0..n as u32).collect();
            let r = ImageDataset::new(bytes.clone(), labels.clone(), shape, 4);
            seen.record(&r);
            if let Ok(ds) = &r {
                let i = index % (2 * n + 1);
                prop_assert_eq!(ds.image(i).is_ok(), i < n);
                let far = ds.image(index | (1 << 62));
                prop_assert!(matches!(far, Err(DataError::IndexOutOfRange { .. })), "{:?}", far);
            }
            let images = Tensor::from_vec(bytes.clone(), bytes.len(), &Device::Cpu).unwrap();
            let labels = Tensor::from_vec(labels, n, &Device::Cpu).unwrap();
            let r = ImageDataset::from_tensors(&images, &labels, shape, 4);
            if let Ok(ds) = &r {
                prop_assert_eq!(ds.images(), &bytes[..]);
            }
            Ok(())
        })
        .unwrap();
    seen.assert_both("ImageDataset::new");
}
