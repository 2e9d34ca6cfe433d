//! CIFAR binary readers, the shared small datasets, and their errors on bad input.

mod common;

use std::path::Path;

use tfkd_data::{DataError, ImageDataset, Split};

const C10_LABELS: [u32; 20] = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6];
const C100_FINE: [u32; 20] = [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97, 70, 53];
const C100_COARSE: [u32; 20] = [10, 10, 0, 4, 10, 2, 11, 7, 10, 4, 10, 12, 19, 19, 5, 8, 2, 8, 2, 4];

fn record(label: &[u8], fill: u8, pixels: usize) -> Vec<u8> {
    let mut r = label.to_vec();
    r.extend(std::iter::repeat(fill).take(pixels));
    r
}

#[test]
fn cifar10_first20_labels_and_u8_pixels() {
    let ds = ImageDataset::read_cifar10_bin(common::fixtures().join("cifar10_test_first20.bin")).unwrap();
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.shape(), (3, 32, 32));
    assert_eq!(ds.labels(), &C10_LABELS);
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(ds.images().len(), 20 * 3072);
    let raw = std::fs::read(common::fixtures().join("cifar10_test_first20.bin")).unwrap();
    assert_eq!(ds.image_bytes(19).unwrap(), &raw[19 * 3073 + 1..20 * 3073]);
    assert!(ds.image_bytes(20).is_none());
}

#[test]
fn cifar100_first20_fine_and_coarse_labels() {
    let ds = ImageDataset::read_cifar100_bin(common::fixtures().join("cifar100_test_first20.bin")).unwrap();
    assert_eq!(ds.labels()[0], 49, "the first CIFAR-100 test image is a mountain");
    assert_eq!(ds.labels(), &C100_FINE);
    assert_eq!(ds.coarse_labels().unwrap(), &C100_COARSE);
    assert_eq!(ds.num_classes(), 100);
    let coarse = ds.into_coarse().unwrap();
    assert_eq!(coarse.labels(), &C100_COARSE);
    assert_eq!(coarse.num_classes(), 20);
}

#[test]
fn cifar100_file_read_as_cifar10_is_caught_and_vice_versa() {
    let p100 = common::fixtures().join("cifar100_test_first20.bin");
    match ImageDataset::read_cifar10_bin(&p100) {
        Err(DataError::TruncatedFile { path, size, record_size }) => {
            assert_eq!((size, record_size), (61_480, 3073));
            assert_eq!(path, p100);
        }
        other => panic!("expected a size error, got {other:?}"),
    }
    let p10 = common::fixtures().join("cifar10_test_first20.bin");
    let e = ImageDataset::read_cifar100_bin(&p10).unwrap_err();
    assert!(e.to_string().contains("cifar10_test_first20.bin") && e.to_string().contains("3074"), "{e}");
}

#[test]
fn truncated_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data_batch_1.bin");
    let mut bytes = record(&[1], 7, 3072).repeat(3);
    bytes.truncate(3 * 3073 - 100);
    std::fs::write(&p, &bytes).unwrap();
    let e = ImageDataset::read_cifar10_bin(&p).unwrap_err();
    assert!(matches!(e, DataError::TruncatedFile { .. }), "{e:?}");
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
}

#[test]
fn label_out_of_range_names_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bin");
    let mut bytes = record(&[1], 0, 3072);
    bytes.extend(record(&[10], 0, 3072));
    std::fs::write(&p, &bytes).unwrap();
    match ImageDataset::read_cifar10_bin(&p).unwrap_err() {
        DataError::LabelOutOfRange { path, record, field, value, classes } => {
            assert_eq!((record, field, value, classes), (1, "label", 10, 10));
            assert_eq!(path, p);
        }
        e => panic!("{e:?}"),
    }
    // CIFAR-100: coarse 20 is out of range, fine 100 too.
    let p = dir.path().join("y.bin");
    std::fs::write(&p, record(&[20, 5], 0, 3072)).unwrap();
    let e = ImageDataset::read_cifar100_bin(&p).unwrap_err();
    assert!(e.to_string().contains("record 0: coarse label 20 out of range 0..20"), "{e}");
    std::fs::write(&p, [record(&[1, 5], 0, 3072), record(&[1, 100], 0, 3072)].concat()).unwrap();
    let e = ImageDataset::read_cifar100_bin(&p).unwrap_err();
    assert!(e.to_string().contains("record 1: fine label 100 out of range 0..100"), "{e}");
}

#[test]
fn missing_files_and_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = ImageDataset::read_cifar10_bin(dir.path().join("nope.bin")).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }) && e.to_string().contains("nope.bin"), "{e}");
    let e = ImageDataset::cifar10(dir.path().join("no-such-dir"), Split::Test).unwrap_err();
    assert!(matches!(e, DataError::MissingFolder { .. }) && e.to_string().contains("no-such-dir"), "{e}");
    let e = ImageDataset::cifar10(dir.path(), Split::Test).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    let e = ImageDataset::cifar100(dir.path(), Split::Train).unwrap_err();
    assert!(e.to_string().contains("train.bin"), "{e}");
}

fn write_records(p: &Path, n: usize, label_bytes: &[u8]) {
    let mut bytes = Vec::with_capacity(n * (3072 + label_bytes.len()));
    for i in 0..n {
        let mut l = label_bytes.to_vec();
        l[label_bytes.len() - 1] = (i % 10) as u8;
        bytes.extend(record(&l, (i % 251) as u8, 3072));
    }
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn official_layouts_and_record_counts() {
    let root = tempfile::tempdir().unwrap();
    let d10 = root.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&d10).unwrap();
    write_records(&d10.join("test_batch.bin"), 10_000, &[0]);
    std::fs::write(d10.join("batches.meta.txt"), "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n").unwrap();
    // Both the parent and the extracted folder are accepted.
    for dir in [root.path(), d10.as_path()] {
        let ds = ImageDataset::cifar10(dir, Split::Test).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.labels()[13], 3);
        assert_eq!(ds.image_bytes(13).unwrap()[0], 13);
        assert_eq!(ds.class_names()[9], "truck");
    }
    // A short official batch is a wrongly sized file.
    write_records(&d10.join("data_batch_1.bin"), 10, &[0]);
    let e = ImageDataset::cifar10(root.path(), Split::Train).unwrap_err();
    assert!(matches!(e, DataError::WrongRecordCount { expected: 10_000, found: 10, .. }), "{e:?}");
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");

    let d100 = root.path().join("cifar-100-binary");
    std::fs::create_dir(&d100).unwrap();
    write_records(&d100.join("test.bin"), 10_000, &[3, 0]);
    let ds = ImageDataset::cifar100(root.path(), Split::Test).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (10_000, 100));
    assert_eq!(ds.coarse_labels().unwrap()[5], 3);
}

#[test]
fn digits_pixel_range_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = record(&[3], 16, 64);
    bytes.extend(record(&[4], 17, 64));
    std::fs::write(dir.path().join("train.bin"), &bytes).unwrap();
    let e = ImageDataset::digits(dir.path(), Split::Train).unwrap_err();
    assert!(e.to_string().contains("record 1: pixel value 17"), "{e}");
    std::fs::write(dir.path().join("test.bin"), &bytes[..65]).unwrap();
    let ds = ImageDataset::digits(dir.path(), Split::Test).unwrap();
    assert_eq!((ds.len(), ds.shape(), ds.pixel_max()), (1, (1, 8, 8), 16));
}

// ---- real shared data (skipped with a printed reason when TFKD_DATA_DIR is not there) ----

#[test]
fn real_cifar_test_samples() {
    let Some(dir) = common::real_data("cifar-test-samples") else { return };
    let ds = ImageDataset::read_cifar10_bin(dir.join("cifar10_test_first20.bin")).unwrap();
    assert_eq!(ds.labels(), &C10_LABELS);
    let ds = ImageDataset::read_cifar100_bin(dir.join("cifar100_test_first20.bin")).unwrap();
    assert_eq!(ds.labels(), &C100_FINE);
    assert_eq!(ds.coarse_labels().unwrap(), &C100_COARSE);
    // The committed copies are byte-identical to the shared files.
    for f in ["cifar10_test_first20.bin", "cifar100_test_first20.bin"] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(common::fixtures().join(f)).unwrap());
    }
}

#[test]
fn real_cifar10_mini() {
    let Some(dir) = common::real_data("cifar10-mini") else { return };
    let train = ImageDataset::cifar10_mini(&dir, Split::Train).unwrap();
    let test = ImageDataset::cifar10_mini(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (5_000, 2_000));
    assert!(train.labels().iter().enumerate().all(|(k, &l)| l as usize == k % 10));
    assert_eq!(train.class_names()[0], "airplane");
    let mean_r: f64 = (0..train.len()).map(|i| train.image_bytes(i).unwrap()[..1024].iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>()
        / (train.len() * 1024) as f64;
    assert!((mean_r - 125.2).abs() < 0.1, "red mean {mean_r}");
}

#[test]
fn real_tiny_imagenet_10() {
    let Some(dir) = common::real_data("tiny-imagenet-10") else { return };
    let train = ImageDataset::tiny_imagenet_10(&dir, Split::Train).unwrap();
    let val = ImageDataset::tiny_imagenet_10(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), val.len()), (2_000, 500));
    assert_eq!(train.shape(), (3, 64, 64));
    assert!(val.labels().iter().enumerate().all(|(k, &l)| l as usize == k % 10));
    assert!(train.class_names()[0].starts_with("goldfish"), "{:?}", train.class_names());
}

#[test]
fn real_digits() {
    let Some(dir) = common::real_data("sklearn-digits") else { return };
    let train = ImageDataset::digits(&dir, Split::Train).unwrap();
    let test = ImageDataset::digits(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (1_347, 450));
    let counts = (0..10).map(|d| test.labels().iter().filter(|&&l| l == d).count()).collect::<Vec<_>>();
    assert_eq!(counts, [43, 46, 43, 47, 48, 45, 47, 45, 41, 45]);
}
