//! The NCCL collective (`collective::NcclGroup`, feature `nccl`) on real
//! GPUs: the data-parallel path of `tfkd train` between GPUs.
//!
//! - One GPU: a group of one process goes through everything a launched run
//!   does (rank 0's NCCL id shared over TCP, the communicator, NCCL's
//!   all-reduce on the device, the CPU flags' round trip, SGD steps on the
//!   all-reduced gradients), and must train exactly as a process without a
//!   group.
//! - Two GPUs or more: two replicas, one per GPU, each on its half of every
//!   batch, must end with the weights of one process at the whole batch, and
//!   with the same weights as each other.
//!
//! Built with `--features nccl` (`scripts/gpu/prepare.sh` builds it and
//! `scripts/gpu/check.sh` runs it); elsewhere each test prints why it did
//! not run.

#[cfg(not(feature = "nccl"))]
#[test]
fn nccl_is_skipped_without_the_nccl_feature() {
    eprintln!("skipped: tfkd-core built without `--features nccl`, so there is no NCCL collective to run");
}

#[cfg(feature = "nccl")]
mod common;

#[cfg(feature = "nccl")]
mod on_gpu {
    use candle_core::{DType, Device, Tensor, Var};
    use std::time::Duration;
    use tfkd_core::collective::{all_reduce_gradients, Collective, NcclGroup, Solo};
    use tfkd_core::optim::{Sgd, SgdConfig};
    use tfkd_core::rng::SeededRng;

    use super::common::rel_err;

    const BATCH: usize = 16;
    const CLASSES: usize = 10;
    const STEPS: usize = 5;

    /// The GPUs of this machine (at most `want`), or none after saying why.
    fn gpus(want: usize) -> Vec<Device> {
        tfkd_core::precision::set_conv_tf32(false);
        // Bit-for-bit comparisons need cuDNN's deterministic algorithms (some
        // weight-gradient ones add with atomics).
        std::env::set_var(tfkd_core::env::CUDNN_DETERMINISTIC, "1");
        let mut found = Vec::new();
        for i in 0..want {
            match Device::new_cuda(i) {
                Ok(d) => found.push(d),
                Err(e) if i == 0 => eprintln!("skipped: no CUDA device ({e})"),
                Err(_) => break,
            }
        }
        found
    }

    /// A free `127.0.0.1` port for rank 0 to listen on.
    fn free_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn random(rng: &mut SeededRng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| rng.normal(0.0, 0.5) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A network without BatchNorm (so that replicas share no statistics):
    /// 3x3 conv → ReLU → global mean → linear; the same initial weights on
    /// every device.
    fn network(device: &Device) -> Vec<(String, Var)> {
        let mut rng = SeededRng::new(7);
        let shapes: [(&str, &[usize]); 3] = [("conv", &[8, 3, 3, 3]), ("bias", &[8]), ("fc", &[CLASSES, 8])];
        shapes
            .iter()
            .map(|(name, shape)| (name.to_string(), Var::from_tensor(&random(&mut rng, shape).to_device(device).unwrap()).unwrap()))
            .collect()
    }

    fn loss(params: &[(String, Var)], images: &Tensor, labels: &Tensor) -> Tensor {
        let [(_, conv), (_, bias), (_, fc)] = params else { unreachable!("three parameters") };
        let y = tfkd_core::conv::conv2d(images, conv.as_tensor(), 1, 1, 1).unwrap();
        let y = y.broadcast_add(&bias.as_tensor().reshape((1, 8, 1, 1)).unwrap()).unwrap().relu().unwrap();
        let features = y.mean((2, 3)).unwrap();
        let logits = features.matmul(&fc.as_tensor().t().unwrap()).unwrap();
        tfkd_core::loss::cross_entropy(&logits, labels).unwrap()
    }

    /// Every step's batch, on the CPU.
    fn batches() -> Vec<(Tensor, Tensor)> {
        let mut rng = SeededRng::new(11);
        (0..STEPS)
            .map(|_| {
                let images = random(&mut rng, &[BATCH, 3, 9, 9]);
                let labels: Vec<u32> = (0..BATCH).map(|_| rng.below(CLASSES) as u32).collect();
                (images, Tensor::from_vec(labels, BATCH, &Device::Cpu).unwrap())
            })
            .collect()
    }

    /// Trains `STEPS` steps as replica `group.rank()` of `group.world_size()`
    /// on `device` (its share of every batch, gradients all-reduced before
    /// each step); the final weights, on the CPU, and each step's sum of the
    /// flag every replica contributes (1).
    fn train(device: &Device, group: &dyn Collective) -> (Vec<Vec<f32>>, Vec<f32>) {
        let params = network(device);
        let config = SgdConfig { lr: 0.5, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: false };
        let mut sgd = Sgd::new(params.clone(), config).unwrap();
        let (rank, world) = (group.rank(), group.world_size());
        let mut flags = Vec::new();
        for (images, labels) in batches() {
            let (start, end) = (BATCH * rank / world, BATCH * (rank + 1) / world);
            let images = images.narrow(0, start, end - start).unwrap().to_device(device).unwrap();
            let labels = labels.narrow(0, start, end - start).unwrap().to_device(device).unwrap();
            let mut grads = tfkd_core::optim::backward(&loss(&params, &images, &labels)).unwrap();
            let weight = (end - start) as f64 / BATCH as f64;
            flags.extend(all_reduce_gradients(&mut grads, &params, weight, &[1.0], group).unwrap());
            sgd.step(&grads).unwrap();
        }
        let weights = params.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        (weights, flags)
    }

    fn join(rank: usize, world: usize, device: &Device, address: &str) -> NcclGroup {
        NcclGroup::join(rank, world, device, address, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("rank {rank} of {world} could not join the NCCL group: {e}"))
    }

    #[test]
    fn a_group_of_one_gpu_trains_as_a_process_without_a_group() {
        let Some(gpu) = gpus(1).pop() else { return };
        let group = join(0, 1, &gpu, &free_address());
        assert_eq!((group.rank(), group.world_size()), (0, 1));

        // NCCL's sum over one rank is the tensor itself, for an odd size on
        // the GPU, for CPU values (they go to the GPU and back) and for bf16.
        let mut rng = SeededRng::new(3);
        let on_gpu = random(&mut rng, &[100_003]).to_device(&gpu).unwrap();
        let sum = group.all_reduce_sum(&on_gpu).unwrap();
        assert!(sum.device().is_cuda());
        assert_eq!(sum.to_vec1::<f32>().unwrap(), on_gpu.to_vec1::<f32>().unwrap());
        let flags = Tensor::new(&[1f32, 0.0, 3.5], &Device::Cpu).unwrap();
        let sum = group.all_reduce_sum(&flags).unwrap();
        assert!(sum.device().is_cpu(), "CPU values come back to the CPU");
        assert_eq!(sum.to_vec1::<f32>().unwrap(), [1.0, 0.0, 3.5]);
        let half = on_gpu.narrow(0, 0, 1000).unwrap().to_dtype(DType::BF16).unwrap();
        let sum = group.all_reduce_sum(&half).unwrap();
        assert_eq!(sum.dtype(), DType::BF16);
        assert_eq!(sum.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), half.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap());

        // Training through the group: the same bits as without one.
        let (through_nccl, flag_sums) = train(&gpu, &group);
        let (alone, _) = train(&gpu, &Solo);
        assert_eq!(flag_sums, vec![1.0; STEPS], "every step's flag, summed over one replica");
        assert_eq!(through_nccl, alone, "a group of one must not change the training");
        eprintln!("NCCL, one GPU: {STEPS} SGD steps through a group of one, bit for bit those of a process alone");
    }

    #[test]
    fn two_gpus_train_as_one_process_at_the_whole_batch() {
        let devices = gpus(2);
        if devices.len() < 2 {
            if !devices.is_empty() {
                eprintln!("skipped: one GPU only (NCCL needs a GPU per rank)");
            }
            return;
        }
        let (reference, _) = train(&devices[0], &Solo);
        let address = free_address();
        let replicas: Vec<(Vec<Vec<f32>>, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(rank, device)| {
                    let address = address.clone();
                    s.spawn(move || train(device, &join(rank, 2, device, &address)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Up to rounding: each GPU times its own convolution algorithms for
        // half the batch. A replica that skipped the all-reduce would be off
        // by far more.
        for (rank, (weights, flags)) in replicas.iter().enumerate() {
            assert_eq!(flags, &vec![2.0; STEPS], "rank {rank}: every step's flag summed over two replicas");
            for ((name, _), (ours, theirs)) in network(&Device::Cpu).iter().zip(weights.iter().zip(&reference)) {
                let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
                let err = rel_err(&f64s(ours), &f64s(theirs));
                assert!(err <= 1e-3, "rank {rank}, {name}: relative difference {err:e} from one process at the whole batch");
            }
        }
        assert_eq!(replicas[0].0, replicas[1].0, "both replicas must hold the same weights after every step");
        eprintln!("NCCL, two GPUs: two replicas at half the batch end as one process at the whole batch");
    }
}
