//! Errors name what they are about (issue 17): empty splits name file and split, a download
//! root that is a file names it, and an OS error's text appears once in an `anyhow` chain.

mod common;

use std::path::Path;

use tfkd_data::download::{self, Remote, Silent};
use tfkd_data::{DataError, ImageDataset, ImageFolder, Split};

/// What the `tfkd` binary prints: `eprintln!("error: {e:#}")` through anyhow.
fn chain(e: DataError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

fn assert_no_samples(e: &DataError, path: &Path, split: Option<Split>) {
    match e {
        DataError::NoSamples { path: p, split: s } => {
            assert_eq!((p.as_path(), *s), (path, split), "{e}");
        }
        e => panic!("expected NoSamples, got {e:?}"),
    }
}

#[test]
fn empty_cifar_binary_names_the_file_and_the_split() {
    let dir = tempfile::tempdir().unwrap();
    // cifar10-mini / digits layout: <dir>/train.bin, <dir>/test.bin.
    for split in [Split::Train, Split::Test] {
        let file = dir.path().join(format!("{split}.bin"));
        std::fs::write(&file, b"").unwrap();
        for e in [
            ImageDataset::cifar10_mini(dir.path(), split).unwrap_err(),
            ImageDataset::digits(dir.path(), split).unwrap_err(),
        ] {
            assert_no_samples(&e, &file, Some(split));
            let msg = chain(e);
            assert!(msg.contains(&file.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("no samples in the {split} split")), "{msg}");
        }
    }
    // The official CIFAR-100 layout.
    let c100 = dir.path().join("cifar-100-binary");
    std::fs::create_dir(&c100).unwrap();
    std::fs::write(c100.join("test.bin"), b"").unwrap();
    let e = ImageDataset::cifar100(dir.path(), Split::Test).unwrap_err();
    assert_no_samples(&e, &c100.join("test.bin"), Some(Split::Test));
    // The official CIFAR-10 layout: an empty batch file among the five.
    let c10 = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&c10).unwrap();
    std::fs::write(c10.join("data_batch_1.bin"), b"").unwrap();
    let e = ImageDataset::cifar10(dir.path(), Split::Train).unwrap_err();
    assert_no_samples(&e, &c10.join("data_batch_1.bin"), Some(Split::Train));
    assert!(e.to_string().contains("data_batch_1.bin: no samples in the train split"), "{e}");
    // A single file read without a split still names the file.
    let e = ImageDataset::read_cifar10_bin(c10.join("data_batch_1.bin")).unwrap_err();
    assert_no_samples(&e, &c10.join("data_batch_1.bin"), None);
    assert!(e.to_string().ends_with("data_batch_1.bin: no samples"), "{e}");
}

#[test]
fn empty_or_absent_tiny_imagenet_names_the_folder_and_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    // Absent: the folder the classes come from is named, with the split.
    for split in [Split::Train, Split::Test] {
        let e = ImageFolder::tiny_imagenet(&root, split).unwrap_err();
        assert!(matches!(e, DataError::MissingFolder { .. }), "{e:?}");
        let msg = chain(e);
        assert!(msg.contains(&root.join("train").display().to_string()), "{msg}");
        assert!(msg.contains(&format!("Tiny-ImageNet {split} split")), "{msg}");
    }
    // An empty train/ folder: no class at all.
    std::fs::create_dir_all(root.join("train")).unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Train).unwrap_err();
    assert_no_samples(&e, &root.join("train"), Some(Split::Train));
    // Classes listed, but their folders hold no image / the annotations list no image.
    std::fs::write(root.join("wnids.txt"), "n01\nn02\n").unwrap();
    for w in ["n01", "n02"] {
        std::fs::create_dir_all(root.join("train").join(w).join("images")).unwrap();
    }
    let e = ImageFolder::tiny_imagenet(&root, Split::Train).unwrap_err();
    assert_no_samples(&e, &root.join("train"), Some(Split::Train));
    assert!(chain(e).contains("train: no samples in the train split"));
    std::fs::create_dir_all(root.join("val").join("images")).unwrap();
    let ann = root.join("val").join("val_annotations.txt");
    std::fs::write(&ann, "\n").unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap_err();
    assert_no_samples(&e, &ann, Some(Split::Test));
    // An empty wnids.txt names that file.
    std::fs::write(root.join("wnids.txt"), "").unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap_err();
    assert_no_samples(&e, &root.join("wnids.txt"), Some(Split::Test));
}

#[test]
fn imagenet_without_images_names_the_split() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("val").join("n01")).unwrap();
    let e = ImageFolder::imagenet(dir.path(), Split::Test).unwrap_err();
    assert_no_samples(&e, &dir.path().join("val"), Some(Split::Test));
}

#[test]
fn download_root_that_is_a_file_is_named_as_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a folder").unwrap();
    for root in [file.clone(), file.join("below")] {
        let e = download::ensure(&Remote::cifar10(), &root, &mut Silent).unwrap_err();
        match &e {
            DataError::NotADirectory { path, .. } => assert_eq!(path, &file),
            e => panic!("expected NotADirectory, got {e:?}"),
        }
        let msg = chain(e);
        assert!(msg.contains(&format!("{} is not a directory", file.display())), "{msg}");
        assert!(!msg.contains("os error"), "{msg}");
    }
    // Nothing was created or downloaded next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[cfg(unix)]
#[test]
fn os_error_text_appears_once_in_the_anyhow_chain() {
    let dir = tempfile::tempdir().unwrap();
    // Reading a folder as a record file: EISDIR, an OS error that is not "not found".
    let e = ImageDataset::read_cifar10_bin(dir.path()).unwrap_err();
    let os_text = match &e {
        DataError::Io { error, path, .. } => {
            assert_eq!(path, dir.path());
            error.to_string()
        }
        e => panic!("expected Io, got {e:?}"),
    };
    assert!(os_text.contains("os error"), "{os_text}");
    let plain = e.to_string();
    let msg = chain(e);
    assert_eq!(msg.matches(&os_text).count(), 1, "{msg}");
    assert_eq!(msg, plain, "nothing is chained twice");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // Candle errors too.
    let e = ImageDataset::from_tensors(
        &candle_core::Tensor::zeros((2, 4), candle_core::DType::U8, &candle_core::Device::Cpu).unwrap(),
        &candle_core::Tensor::zeros((2, 3), candle_core::DType::U8, &candle_core::Device::Cpu).unwrap(),
        (1, 2, 2),
        10,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Candle(_)), "{e:?}");
    let inner = match &e {
        DataError::Candle(c) => c.to_string(),
        _ => unreachable!(),
    };
    let msg = chain(e);
    assert_eq!(msg.matches(inner.lines().next().unwrap()).count(), 1, "{msg}");
}

/// Every error variant whose message embeds another error's text is not also its `source()`.
#[test]
fn no_variant_both_embeds_and_links_its_source() {
    use std::error::Error;
    let io = DataError::Io {
        action: "reading",
        path: "x".into(),
        error: std::io::Error::from_raw_os_error(21),
    };
    assert!(io.source().is_none());
    let candle = DataError::from(candle_core::Error::Msg("m".into()));
    assert!(candle.source().is_none());
}

#[test]
fn tiny_imagenet_names_that_leave_their_folder_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("wnids.txt"), "n01\n").unwrap();
    std::fs::create_dir_all(root.join("train/n01/images")).unwrap();
    std::fs::create_dir_all(root.join("val/images")).unwrap();
    for bad in ["../../secret.JPEG", "/etc/passwd", "sub/val_0.JPEG"] {
        std::fs::write(root.join("val/val_annotations.txt"), format!("val_0.JPEG\tn01\n{bad}\tn01\n")).unwrap();
        let e = ImageFolder::tiny_imagenet(root, Split::Test).unwrap_err();
        assert!(matches!(e, DataError::BadLine { line: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("val_annotations.txt: line 2") && e.to_string().contains(bad), "{e}");
    }
    std::fs::write(root.join("wnids.txt"), "n01\n\n../n02\n").unwrap();
    let e = ImageFolder::tiny_imagenet(root, Split::Train).unwrap_err();
    assert!(matches!(e, DataError::BadLine { line: 3, .. }) && e.to_string().contains("wnids.txt"), "{e:?}");
}
