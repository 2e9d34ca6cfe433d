//! Transforms against torchvision's output for fixed random parameters (fixtures written by
//! `scripts/gen_data_fixtures.py` from torchvision on PIL images). All comparisons are exact.

mod common;

use serde_json::Value;
use tfkd_data::transforms::{self, CifarParams, Normalization, Scratch};
use tfkd_data::{Image, ImageDataset};

fn manifest() -> Value {
    let text = std::fs::read_to_string(common::fixtures().join("transforms.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cases(kind: &str) -> Vec<Value> {
    let m = manifest();
    let v: Vec<Value> = m["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == kind).cloned().collect();
    assert!(!v.is_empty(), "no {kind} fixtures");
    v
}

fn shape(v: &Value) -> (usize, usize, usize) {
    let a: Vec<usize> = v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    (a[0], a[1], a[2])
}

fn input(case: &Value) -> Image<'static> {
    let (c, h, w) = shape(&case["input_shape"]);
    Image::owned(c, h, w, common::gunzip(case["input"].as_str().unwrap()))
}

fn f32s(name: &str) -> Vec<f32> {
    common::gunzip(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn mismatches(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn cifar_source(name: &str) -> ImageDataset {
    let f = common::fixtures();
    match name {
        "c10" => ImageDataset::read_cifar10_bin(f.join("cifar10_test_first20.bin")).unwrap(),
        _ => ImageDataset::read_cifar100_bin(f.join("cifar100_test_first20.bin")).unwrap(),
    }
}

#[test]
fn cifar_crop_flip_rotate_matches_torchvision_exactly() {
    let mut total = 0;
    for case in cases("cifar_train") {
        let ds = cifar_source(case["source"].as_str().unwrap());
        let idx = case["index"].as_u64().unwrap() as usize;
        let p = &case["params"];
        let params = CifarParams {
            top: p["top"].as_u64().unwrap() as usize,
            left: p["left"].as_u64().unwrap() as usize,
            flip: p["flip"].as_bool().unwrap(),
            angle: p["angle"].as_f64().unwrap(),
        };
        let img = Image::borrowed(3, 32, 32, ds.image_bytes(idx).unwrap());
        let want = common::gunzip(case["output"].as_str().unwrap());

        // Step by step with the separate transforms...
        let mut x = transforms::pad_crop(&img, 4, params.top, params.left, 32);
        if params.flip {
            x = transforms::hflip(&x);
        }
        let x = transforms::rotate(&x, params.angle);
        assert_eq!(mismatches(&x.data, &want), 0, "{}: step-by-step", case["name"]);

        // ...and with the fused fast path.
        let mut out = vec![0u8; 3072];
        transforms::cifar_augment_into(&img.data, 3, 32, 4, &params, &mut Vec::new(), &mut out);
        assert_eq!(mismatches(&out, &want), 0, "{}: fused", case["name"]);

        if let Some(norm) = case["normalized"].as_str() {
            let mut f = vec![0f32; 3072];
            Normalization::cifar100().apply(&x, &mut f).unwrap();
            let want = f32s(norm);
            assert!(f.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: normalisation", case["name"]);
        }
        total += 1;
    }
    assert!(total >= 10);
}

#[test]
fn tiny_rotate_flip_matches_torchvision_exactly() {
    for case in cases("tiny_train") {
        let img = input(&case);
        let p = &case["params"];
        let mut x = transforms::rotate(&img, p["angle"].as_f64().unwrap());
        if p["flip"].as_bool().unwrap() {
            x = transforms::hflip(&x);
        }
        let want = common::gunzip(case["output"].as_str().unwrap());
        assert_eq!(mismatches(&x.data, &want), 0, "{}", case["name"]);
        if let Some(norm) = case["normalized"].as_str() {
            let mut f = vec![0f32; x.data.len()];
            Normalization::tiny_imagenet().apply(&x, &mut f).unwrap();
            let want = f32s(norm);
            assert!(f.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: normalisation", case["name"]);
        }
    }
}

#[test]
fn resized_crop_matches_torchvision_exactly() {
    for case in cases("resized_crop") {
        let img = input(&case);
        let p = &case["params"];
        let g = |k: &str| p[k].as_u64().unwrap() as usize;
        let c = transforms::crop(&img, g("top"), g("left"), g("height"), g("width")).unwrap();
        let x = transforms::resize_bilinear(&c, g("size"), g("size"));
        let want = common::gunzip(case["output"].as_str().unwrap());
        assert_eq!(x.shape(), shape(&case["output_shape"]));
        assert_eq!(mismatches(&x.data, &want), 0, "{}", case["name"]);
    }
}

#[test]
fn resize_center_crop_matches_torchvision_exactly() {
    for case in cases("imagenet_eval") {
        let img = input(&case);
        let p = &case["params"];
        let (h, w) = transforms::resize_shorter_dims(img.height, img.width, 256);
        let hw: Vec<u64> = p["resized_hw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!((h as u64, w as u64), (hw[0], hw[1]));
        let x = transforms::center_crop(&transforms::resize_bilinear(&img, h, w), 224).unwrap();
        let want = common::gunzip(case["output"].as_str().unwrap());
        assert_eq!(mismatches(&x.data, &want), 0, "{}", case["name"]);
    }
}

#[test]
fn pipelines_reach_the_same_bytes_as_the_primitives() {
    // The imagenet_eval pipeline (ops + normalisation) equals resize → crop → normalise.
    let case = &cases("imagenet_eval")[0];
    let img = input(case);
    let pipe = tfkd_data::Pipeline::imagenet_eval();
    let mut rng = tfkd_data::SeededRng::new(0);
    let mut out = vec![0f32; 3 * 224 * 224];
    pipe.apply_into(&img, &mut rng, &mut Scratch::default(), &mut out, (3, 224, 224), 0).unwrap();
    let want = common::gunzip(case["output"].as_str().unwrap());
    let mut f = vec![0f32; want.len()];
    Normalization::imagenet().apply(&Image::owned(3, 224, 224, want), &mut f).unwrap();
    assert_eq!(out, f);
}

#[test]
fn center_crop_offsets_round_half_to_even_like_python() {
    // (341 - 224) / 2 = 58.5 → 58; (275 - 224) / 2 = 25.5 → 26.
    assert_eq!(transforms::center_crop_offsets(256, 341, 224), (16, 58));
    assert_eq!(transforms::center_crop_offsets(275, 256, 224), (26, 16));
    assert_eq!(transforms::resize_shorter_dims(240, 320, 256), (256, 341));
    assert_eq!(transforms::resize_shorter_dims(300, 263, 256), (292, 256));
}

#[test]
fn fused_cifar_path_equals_the_generic_op_chain_for_the_same_stream() {
    let ds = cifar_source("c10");
    let pipe = tfkd_data::Pipeline::cifar_train(Normalization::cifar100());
    let lut_norm = Normalization::cifar100();
    let mut scratch = Scratch::default();
    let mut flips = 0;
    for i in 0..20u64 {
        let img = Image::borrowed(3, 32, 32, ds.image_bytes(i as usize).unwrap());
        let mut fast = vec![0f32; 3072];
        pipe.apply_into(&img, &mut tfkd_data::SeededRng::derive(9, &[0, i]), &mut scratch, &mut fast, (3, 32, 32), 0).unwrap();
        let slow_u8 = pipe.augment(&img, &mut tfkd_data::SeededRng::derive(9, &[0, i])).unwrap();
        let mut slow = vec![0f32; 3072];
        lut_norm.apply(&slow_u8, &mut slow).unwrap();
        assert_eq!(fast, slow, "image {i}");
        let p = tfkd_data::Pipeline::draw_cifar_params(&mut tfkd_data::SeededRng::derive(9, &[0, i]), 4, 0.5, 15.0);
        assert!(p.top <= 8 && p.left <= 8 && (-15.0..15.0).contains(&p.angle));
        flips += p.flip as usize;
    }
    assert!((3..=17).contains(&flips), "{flips} flips in 20");
}

#[test]
fn one_scratch_reused_by_two_pipelines_applies_each_ones_normalisation() {
    // Issue 15: the scratch cached the first pipeline's table and applied it to the second.
    let ds = cifar_source("c10");
    let img = Image::borrowed(3, 32, 32, ds.image_bytes(0).unwrap());
    let cifar = tfkd_data::Pipeline::eval(Normalization::cifar100());
    let scaled = tfkd_data::Pipeline::eval(Normalization::scale_only(255.0, 3));
    let mut shared = Scratch::default();
    for pipe in [&cifar, &scaled, &cifar] {
        let mut reused = vec![0f32; 3072];
        pipe.apply_into(&img, &mut tfkd_data::SeededRng::new(0), &mut shared, &mut reused, (3, 32, 32), 0).unwrap();
        let mut fresh = vec![0f32; 3072];
        pipe.norm.apply(&img, &mut fresh).unwrap();
        assert_eq!(reused, fresh, "{:?}", pipe.norm);
    }
    // Channel-count changes through the same scratch, too (1-channel digits after RGB).
    let grey = Image::borrowed(1, 32, 32, &ds.image_bytes(0).unwrap()[..1024]);
    let digits = tfkd_data::Pipeline::eval(Normalization::scale_only(16.0, 1));
    let mut out = vec![0f32; 1024];
    digits.apply_into(&grey, &mut tfkd_data::SeededRng::new(0), &mut shared, &mut out, (1, 32, 32), 0).unwrap();
    assert_eq!(out[0], grey.data[0] as f32 / 16.0);
}
