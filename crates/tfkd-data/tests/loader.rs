//! The threaded loader: determinism across thread counts, shuffling, drop_last, tensors.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use tfkd_data::{ImageDataset, Loader, LoaderConfig, Normalization, Pipeline, Source};

fn synthetic(n: usize) -> ImageDataset {
    let images: Vec<u8> = (0..n * 3072).map(|i| ((i * 31 + i / 3072 * 7) % 256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    ImageDataset::new(images, labels, (3, 32, 32), 10).unwrap()
}

fn loader(ds: &Arc<ImageDataset>, cfg: LoaderConfig) -> Loader {
    Loader::new(ds.clone(), Pipeline::cifar_train(Normalization::cifar100()), cfg, Device::Cpu).unwrap()
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let ds = Arc::new(synthetic(203));
    let reference = loader(&ds, LoaderConfig::train(32, 7).with_threads(0)).host_batches(3).unwrap();
    assert_eq!(reference.len(), 7);
    for threads in [0, 1, 2, 3, 5] {
        let l = loader(&ds, LoaderConfig::train(32, 7).with_threads(threads));
        let mut it = l.epoch(3);
        let mut got = Vec::new();
        while let Some(b) = it.next_host_batch() {
            got.push(b.unwrap());
        }
        assert_eq!(got, reference, "{threads} threads");
    }
}

/// A run resumed in the middle of an epoch reads the rest of that epoch's
/// batches, augmentation included, whatever the thread count.
#[test]
fn an_epoch_from_a_batch_on_is_the_rest_of_the_epoch() {
    let ds = Arc::new(synthetic(203));
    let reference = loader(&ds, LoaderConfig::train(32, 7).with_threads(0)).host_batches(3).unwrap();
    for (threads, first) in [(0, 0), (2, 3), (3, 6), (2, 7), (1, 9)] {
        let l = loader(&ds, LoaderConfig::train(32, 7).with_threads(threads));
        let mut it = l.epoch_from(3, first);
        let mut got = Vec::new();
        while let Some(b) = it.next_host_batch() {
            got.push(b.unwrap());
        }
        assert_eq!(got, reference[first.min(reference.len())..], "{threads} threads from batch {first}");
    }
}

#[test]
fn tensors_on_the_device_match_the_host_batches() {
    let ds = Arc::new(synthetic(70));
    let l = loader(&ds, LoaderConfig::train(32, 1));
    let host = l.host_batches(0).unwrap();
    let batches: Vec<_> = l.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].images.dims(), &[6, 3, 32, 32]);
    assert_eq!(batches[0].images.dtype(), DType::F32);
    assert_eq!(batches[0].labels.dtype(), DType::U32);
    for (b, h) in batches.iter().zip(&host) {
        assert_eq!(b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), h.images);
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), h.labels);
        assert_eq!(b.indices, h.indices);
        let want: Vec<u32> = h.indices.iter().map(|&i| ds.label(i).unwrap()).collect();
        assert_eq!(h.labels, want);
    }
}

#[test]
fn shuffling_is_per_epoch_and_seeded() {
    let ds = Arc::new(synthetic(100));
    let a = loader(&ds, LoaderConfig::train(10, 5));
    let b = loader(&ds, LoaderConfig::train(10, 5));
    let c = loader(&ds, LoaderConfig::train(10, 6));
    assert_eq!(a.order(0), b.order(0));
    assert_ne!(a.order(0), a.order(1));
    assert_ne!(a.order(0), c.order(0));
    let mut o = a.order(4);
    o.sort();
    assert_eq!(o, (0..100).collect::<Vec<_>>());
    // Augmentation differs between epochs and seeds.
    assert_ne!(a.host_batches(0).unwrap()[0].images, c.host_batches(0).unwrap()[0].images);
    let eval = Loader::new(ds.clone(), Pipeline::eval(Normalization::cifar100()), LoaderConfig::eval(30), Device::Cpu).unwrap();
    assert_eq!(eval.order(9), (0..100).collect::<Vec<_>>());
}

#[test]
fn drop_last_drops_only_the_incomplete_batch() {
    let ds = Arc::new(synthetic(65));
    let keep = loader(&ds, LoaderConfig::train(16, 0));
    let drop = loader(&ds, LoaderConfig::train(16, 0).with_drop_last(true));
    assert_eq!((keep.num_batches(), drop.num_batches()), (5, 4));
    let kept: Vec<usize> = keep.epoch(0).map(|b| b.unwrap().indices.len()).collect();
    let dropped: Vec<usize> = drop.epoch(0).map(|b| b.unwrap().indices.len()).collect();
    assert_eq!(kept, [16, 16, 16, 16, 1]);
    assert_eq!(dropped, [16, 16, 16, 16]);
}

#[test]
fn eval_pipeline_is_plain_normalisation_of_the_dataset_order() {
    let ds = Arc::new(ImageDataset::read_cifar10_bin(common::fixtures().join("cifar10_test_first20.bin")).unwrap());
    let l = Loader::new(ds.clone(), Pipeline::eval(Normalization::cifar100()), LoaderConfig::eval(8), Device::Cpu).unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.indices, (0..8).collect::<Vec<_>>());
    let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let px = ds.image_bytes(0).unwrap()[0];
    let want = (px as f32 / 255.0 - 0.507_075_16_f32) / 0.267_334_28_f32;
    assert_eq!(v[0], want);
    assert_eq!(b.labels.to_vec1::<u32>().unwrap(), [3, 8, 8, 0, 6, 6, 1, 6]);
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let ds = Arc::new(synthetic(300));
    let l = loader(&ds, LoaderConfig::train(4, 0).with_threads(2));
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it); // joins the workers; hangs here if they were not stopped
}

#[test]
fn bad_config_is_refused() {
    let ds = Arc::new(synthetic(3));
    let e = Loader::new(ds.clone(), Pipeline::eval(Normalization::cifar100()), LoaderConfig::eval(0), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("batch size"), "{e}");
    let e = Loader::new(ds, Pipeline::eval(Normalization::scale_only(16.0, 1)), LoaderConfig::eval(2), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("1 channel constants for 3-channel images"), "{e}");
}

#[test]
fn real_cifar10_mini_epoch() {
    let Some(dir) = common::real_data("cifar10-mini") else { return };
    let ds = Arc::new(ImageDataset::cifar10_mini(&dir, tfkd_data::Split::Test).unwrap());
    let l = loader(&ds, LoaderConfig::train(128, 3).with_threads(2));
    let mut n = 0;
    for b in l.epoch(0) {
        let b = b.unwrap();
        n += b.indices.len();
        let m = b.images.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m.abs() < 0.5, "batch mean {m}");
    }
    assert_eq!(n, 2_000);
}

#[test]
fn datasets_from_candle_tensors_round_trip_u8_and_unit_floats() {
    use candle_core::Tensor;
    let bytes: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 256) as u8).collect();
    // As candle-datasets' MNIST reader returns them: (N, 784) f32 in [0, 1], u8 labels.
    let f = (Tensor::from_vec(bytes.clone(), (2, 784), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap() / 255.0).unwrap();
    let labels = Tensor::new(&[7u8, 2], &Device::Cpu).unwrap();
    let ds = ImageDataset::from_tensors(&f, &labels, (1, 28, 28), 10).unwrap();
    assert_eq!(ds.images(), &bytes[..]);
    assert_eq!(ds.labels(), [7, 2]);
    let u = Tensor::from_vec(bytes.clone(), (2, 1, 28, 28), &Device::Cpu).unwrap();
    assert_eq!(ImageDataset::from_tensors(&u, &labels, (1, 28, 28), 10).unwrap().images(), &bytes[..]);
    let e = ImageDataset::from_tensors(&(f * 2.0).unwrap(), &labels, (1, 28, 28), 10).unwrap_err();
    assert!(e.to_string().contains("outside [0, 1]"), "{e}");
    let e = ImageDataset::from_tensors(&u, &labels, (3, 28, 28), 10).unwrap_err();
    assert!(e.to_string().contains("does not hold 2 images"), "{e}");
    let bad = Tensor::new(&[7u8, 12], &Device::Cpu).unwrap();
    assert!(ImageDataset::from_tensors(&u, &bad, (1, 28, 28), 10).is_err());
    let neg = Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap();
    let e = ImageDataset::from_tensors(&u, &neg, (1, 28, 28), 10).unwrap_err();
    assert!(e.to_string().contains("label -1 of sample 1"), "{e}");
}
