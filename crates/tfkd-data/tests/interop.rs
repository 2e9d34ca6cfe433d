//! candle-datasets interop (feature `candle-datasets`): both directions on the committed CIFAR
//! samples, and the errors of tensors that are not a dataset.
#![cfg(feature = "candle-datasets")]

mod common;

use candle_core::{DType, Device, Tensor};
use tfkd_data::interop::{self, Dataset};
use tfkd_data::{DataError, ImageDataset, Split};

fn cifar() -> (ImageDataset, ImageDataset) {
    let c10 = ImageDataset::read_cifar10_bin(common::fixtures().join("cifar10_test_first20.bin")).unwrap();
    (c10.take(15), ImageDataset::new(c10.images()[15 * 3072..].to_vec(), c10.labels()[15..].to_vec(), (3, 32, 32), 10).unwrap())
}

#[test]
fn cifar_round_trips_through_candle_datasets_exactly() {
    let (train, test) = cifar();
    let ds = interop::to_candle_dataset(&train, &test, &Device::Cpu).unwrap();
    assert_eq!((ds.train_images.dims(), ds.test_images.dims(), ds.labels), (&[15, 3, 32, 32][..], &[5, 3, 32, 32][..], 10));
    assert_eq!((ds.train_images.dtype(), ds.train_labels.dtype()), (DType::F32, DType::U8));
    // The values candle-datasets' CIFAR reader computes from the same bytes.
    let theirs = (Tensor::from_slice(train.images(), (15, 3, 32, 32), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap() / 255.).unwrap();
    let diff = (&ds.train_images - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    assert_eq!(ds.train_labels.to_vec1::<u8>().unwrap(), train.labels().iter().map(|&l| l as u8).collect::<Vec<_>>());
    let (train2, test2) = interop::from_candle_dataset(&ds).unwrap();
    assert_eq!((train2, test2), (train, test));
}

#[test]
fn image_shapes_are_read_from_the_tensor_layout() {
    let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(interop::image_shape(&t(&[2, 3, 8, 6])).unwrap(), (3, 8, 6));
    assert_eq!(interop::image_shape(&t(&[2, 28, 28])).unwrap(), (1, 28, 28));
    assert_eq!(interop::image_shape(&t(&[2, 784])).unwrap(), (1, 28, 28));
    assert_eq!(interop::image_shape(&t(&[2, 3072])).unwrap(), (3, 32, 32));
    let e = interop::image_shape(&t(&[2, 10])).unwrap_err();
    assert!(e.to_string().contains("10 values per image"), "{e}");
    let e = interop::image_shape(&t(&[2])).unwrap_err();
    assert!(matches!(e, DataError::InvalidConfig { .. }), "{e:?}");
}

#[test]
fn bad_candle_datasets_are_refused_naming_the_split() {
    let dev = Device::Cpu;
    let ds = |test_labels: Vec<u8>, test_n: usize| Dataset {
        train_images: Tensor::zeros((2, 16), DType::F32, &dev).unwrap(),
        train_labels: Tensor::new(&[0u8, 1], &dev).unwrap(),
        test_images: Tensor::zeros((test_n, 16), DType::F32, &dev).unwrap(),
        test_labels: Tensor::from_vec(test_labels, test_n, &dev).unwrap(),
        labels: 3,
    };
    let ok = interop::split_from_candle_dataset(&ds(vec![2], 1), Split::Test).unwrap();
    assert_eq!((ok.shape(), ok.labels()), ((1, 4, 4), &[2u32][..]));
    let e = interop::from_candle_dataset(&ds(vec![3], 1)).unwrap_err();
    assert!(e.to_string().contains("test split of the candle-datasets dataset: label 3 of sample 0 out of range 0..3"), "{e}");
    let e = interop::from_candle_dataset(&ds(vec![], 0)).unwrap_err();
    assert!(e.to_string().contains("no samples in the test split"), "{e}");
    let mut bad = ds(vec![1], 1);
    bad.train_images = (Tensor::ones((2, 16), DType::F32, &dev).unwrap() * 2.0).unwrap();
    let e = interop::split_from_candle_dataset(&bad, Split::Train).unwrap_err();
    assert!(e.to_string().contains("train split") && e.to_string().contains("outside [0, 1]"), "{e}");
    // Splits of different shapes or class counts do not make one Dataset.
    let (train, _) = cifar();
    let other = ImageDataset::new(vec![0; 16], vec![0], (1, 4, 4), 10).unwrap();
    let Err(e) = interop::to_candle_dataset(&train, &other, &dev) else { panic!("different shapes were accepted") };
    assert!(e.to_string().contains("(3, 32, 32)") && e.to_string().contains("(1, 4, 4)"), "{e}");
}
