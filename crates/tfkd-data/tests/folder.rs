//! Tiny-ImageNet in the official layout, ImageNet class folders, and their errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use tfkd_data::{DataError, ImageFolder, Loader, LoaderConfig, Pipeline, Source, Split};

fn write_jpeg(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8 ^ seed, (y * 4) as u8, seed]));
    img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

/// A 3-class Tiny-ImageNet in the official archive's layout.
fn tiny_tree(root: &Path) {
    let wnids = ["n02", "n01", "n03"]; // wnids.txt is not sorted; labels follow sorted order
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("wnids.txt"), wnids.join("\n")).unwrap();
    for (k, w) in wnids.iter().enumerate() {
        for j in 0..2 {
            write_jpeg(&root.join(format!("train/{w}/images/{w}_{j}.JPEG")), 64, 64, (k * 2 + j) as u8 * 20);
        }
        std::fs::write(root.join(format!("train/{w}/{w}_boxes.txt")), "x").unwrap();
    }
    let mut ann = String::new();
    for (i, w) in ["n03", "n01", "n02", "n01"].iter().enumerate() {
        write_jpeg(&root.join(format!("val/images/val_{i}.JPEG")), 64, 64, i as u8);
        ann.push_str(&format!("val_{i}.JPEG\t{w}\t0\t0\t10\t10\n"));
    }
    std::fs::write(root.join("val/val_annotations.txt"), ann).unwrap();
    write_jpeg(&root.join("test/images/test_0.JPEG"), 64, 64, 9);
}

#[test]
fn tiny_imagenet_official_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    tiny_tree(&root);
    let train = ImageFolder::tiny_imagenet(&root, Split::Train).unwrap();
    assert_eq!(train.classes(), ["n01", "n02", "n03"]);
    assert_eq!(train.len(), 6);
    let labels: Vec<u32> = (0..6).map(|i| train.label(i).unwrap()).collect();
    assert_eq!(labels, [0, 0, 1, 1, 2, 2]);
    assert!(train.samples()[0].0.ends_with("train/n01/images/n01_0.JPEG"));
    let val = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap();
    let labels: Vec<u32> = (0..4).map(|i| val.label(i).unwrap()).collect();
    assert_eq!(labels, [2, 0, 1, 0]);
    // Decoded into memory as u8.
    let mem = val.load_all(64, 64, 2).unwrap();
    assert_eq!((mem.len(), mem.shape(), mem.labels()), (4, (3, 64, 64), &[2u32, 0, 1, 0][..]));
    assert_eq!(mem.image_bytes(1).unwrap(), &val.image(1).unwrap().data[..]);
    // Train pipeline through the loader.
    let l = Loader::new(Arc::new(mem), Pipeline::tiny_imagenet_train(), LoaderConfig::train(3, 1), Device::Cpu).unwrap();
    let dims: Vec<Vec<usize>> = l.epoch(0).map(|b| b.unwrap().images.dims().to_vec()).collect();
    assert_eq!(dims, [vec![3, 3, 64, 64], vec![1, 3, 64, 64]]);
}

#[test]
fn tiny_imagenet_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    tiny_tree(&root);
    let ann = root.join("val/val_annotations.txt");
    std::fs::write(&ann, "val_0.JPEG\tn01\t0\t0\t1\t1\nval_1.JPEG\tn99\t0\t0\t1\t1\n").unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap_err();
    assert!(e.to_string().contains("val_annotations.txt: line 2: unknown wnid \"n99\""), "{e}");
    std::fs::write(&ann, "garbage\n").unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap_err();
    assert!(matches!(e, DataError::BadLine { line: 1, .. }), "{e:?}");
    std::fs::remove_file(&ann).unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }) && e.to_string().contains("val_annotations.txt"), "{e}");
    std::fs::remove_dir_all(root.join("train/n02")).unwrap();
    let e = ImageFolder::tiny_imagenet(&root, Split::Train).unwrap_err();
    assert!(matches!(e, DataError::MissingFolder { .. }) && e.to_string().contains("n02"), "{e}");
}

#[test]
fn unreadable_jpeg_and_wrong_size_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tiny-imagenet-200");
    tiny_tree(&root);
    let bad = root.join("train/n02/images/n02_1.JPEG");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let train = ImageFolder::tiny_imagenet(&root, Split::Train).unwrap();
    let e = train.load_all(64, 64, 2).unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }) && e.to_string().contains("n02_1.JPEG"), "{e}");
    // The loader reports the same file, and stops.
    let l = Loader::new(Arc::new(train), Pipeline::tiny_imagenet_eval(), LoaderConfig::eval(2), Device::Cpu).unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert_eq!(results.len(), 2, "stops after the failing batch");
    assert!(results[1].as_ref().unwrap_err().to_string().contains("n02_1.JPEG"));
    std::fs::write(&bad, b"not a jpeg at all").unwrap();
    let e = tfkd_data::folder::decode_rgb(&bad).unwrap_err();
    assert!(e.to_string().contains("n02_1.JPEG"), "{e}");

    write_jpeg(&root.join("val/images/val_2.JPEG"), 32, 48, 0);
    let e = ImageFolder::tiny_imagenet(&root, Split::Test).unwrap().load_all(64, 64, 1).unwrap_err();
    assert!(e.to_string().contains("val_2.JPEG: image is 32x48, expected 64x64"), "{e}");
}

#[test]
fn imagenet_class_folders_with_the_eval_and_train_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    for (c, n) in [("goldfish", 2), ("airliner", 1)] {
        for i in 0..n {
            write_jpeg(&dir.path().join(format!("train/{c}/img{i}.JPEG")), 300 + 10 * i, 260, 3);
            write_jpeg(&dir.path().join(format!("val/{c}/v{i}.jpg")), 250, 400, 5);
        }
    }
    std::fs::write(dir.path().join("train/goldfish/notes.txt"), "skip me").unwrap();
    let train = ImageFolder::imagenet(dir.path(), Split::Train).unwrap();
    assert_eq!(train.classes(), ["airliner", "goldfish"]);
    assert_eq!(train.len(), 3);
    let l = Loader::new(Arc::new(train), Pipeline::imagenet_train(), LoaderConfig::train(2, 0), Device::Cpu).unwrap();
    let b: Vec<_> = l.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(b[0].images.dims(), [2, 3, 224, 224]);
    let val = ImageFolder::imagenet(dir.path(), Split::Test).unwrap();
    let l = Loader::new(Arc::new(val), Pipeline::imagenet_eval(), LoaderConfig::eval(4), Device::Cpu).unwrap();
    assert_eq!(l.epoch(0).next().unwrap().unwrap().images.dims(), [3, 3, 224, 224]);
    let e = ImageFolder::imagenet(dir.path().join("nowhere"), Split::Test).unwrap_err();
    assert!(matches!(e, DataError::MissingFolder { .. }) && e.to_string().contains("nowhere"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    assert!(matches!(ImageFolder::open(&empty).unwrap_err(), DataError::Empty { .. }));
}

#[test]
fn random_resized_crop_params_stay_inside_and_follow_torchvision_ranges() {
    let mut rng = tfkd_data::SeededRng::new(3);
    for _ in 0..500 {
        let (t, l, h, w) = tfkd_data::transforms::random_resized_crop_params(&mut rng, 200, 300, (0.08, 1.0), (0.75, 4.0 / 3.0));
        assert!(t + h <= 200 && l + w <= 300 && h > 0 && w > 0);
        let area = (h * w) as f64 / 60_000.0;
        assert!((0.07..=1.0).contains(&area), "area {area}");
    }
    // Impossible ratio → the central fallback of torchvision.
    let p = tfkd_data::transforms::random_resized_crop_params(&mut rng, 100, 400, (0.9, 1.0), (0.5, 0.6));
    assert_eq!(p, (0, 170, 100, 60));
    // Degenerate settings give a valid crop, never a panic.
    let p = tfkd_data::transforms::random_resized_crop_params(&mut rng, 50, 40, (0.5, 0.5), (-1.0, 0.0));
    assert!(p.0 + p.2 <= 50 && p.1 + p.3 <= 40 && p.2 > 0 && p.3 > 0, "{p:?}");
    let img = tfkd_data::Image::owned(3, 8, 8, (0..192).map(|v| v as u8).collect());
    let still = tfkd_data::Op::RandomRotation { degrees: 0.0 }.apply(&img, &mut rng).unwrap();
    assert_eq!(still, img);
}

/// Every extension `ImageFolder` accepts (torchvision's `IMG_EXTENSIONS`)
/// decodes: a listed format without its decoder would fail mid-epoch.
#[test]
fn every_accepted_extension_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 19 % 256) as u8).collect();
    for ext in tfkd_data::folder::IMAGE_EXTENSIONS {
        let path = dir.path().join(format!("a.{ext}"));
        // pgm is grey: decoding turns it into three equal planes.
        if ext == "pgm" {
            image::save_buffer(&path, &rgb[..12], 4, 3, image::ColorType::L8).unwrap();
        } else {
            image::save_buffer(&path, &rgb, 4, 3, image::ColorType::Rgb8).unwrap_or_else(|e| panic!("{ext}: {e}"));
        }
        let img = tfkd_data::folder::decode_rgb(&path).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!(img.shape(), (3, 3, 4), "{ext}");
        if ext != "jpg" && ext != "jpeg" && ext != "pgm" {
            // Lossless formats give the exact pixels back.
            assert_eq!(img.plane(0)[0], rgb[0], "{ext}");
            assert_eq!(img.plane(2)[11], rgb[35], "{ext}");
        }
    }
}
