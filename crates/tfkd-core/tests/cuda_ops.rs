//! Every op tfkd runs on CUDA against its CPU path: values to 1e-4 and
//! gradients to 1e-3 of the reference's largest magnitude, on the zoo's
//! shapes (odd sizes, stride 2, groups, depthwise), with strict f32
//! convolutions (TF32 off). Convolutions and BatchNorm take cuDNN where it
//! loads and tfkd's own CUDA paths where it does not; each test says which.
//!
//! Built with `--features cuda` and run on a machine with a GPU
//! (`scripts/gpu/check.sh` carries the compiled binary there); elsewhere each
//! test prints why it did not run.

// The checks read `!(err <= tol)` on purpose: a NaN error must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_ops_are_skipped_without_the_cuda_feature() {
    eprintln!("skipped: tfkd-core built without `--features cuda`, so there is no CUDA path to compare");
}

#[cfg(feature = "cuda")]
mod common;

#[cfg(feature = "cuda")]
mod on_gpu {
    use candle_core::{DType, Device, ModuleT, Tensor, Var};
    use tfkd_core::rng::SeededRng;

    use super::common::{rel_err, to_f64, Case};

    const VALUE_TOL: f64 = 1e-4;
    const GRAD_TOL: f64 = 1e-3;

    /// The GPU, with strict f32 convolutions and the memory pool set up as
    /// `tfkd train` sets it up, or `None` after saying why.
    fn gpu() -> Option<Device> {
        tfkd_core::precision::set_conv_tf32(false);
        match Device::new_cuda(0) {
            Ok(d) => {
                tfkd_core::gpu_memory::retain_freed_memory(&d).unwrap();
                tfkd_core::gpu_memory::skip_buffer_events(&d).unwrap();
                Some(d)
            }
            Err(e) => {
                eprintln!("skipped: no CUDA device ({e})");
                None
            }
        }
    }

    fn random(rng: &mut SeededRng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| rng.normal(0.0, 1.0) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn check(what: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
        assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
        let err = rel_err(&to_f64(&ours.to_device(&Device::Cpu).unwrap()), &to_f64(reference));
        assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    }

    const CONV_CASES: &[Case] = &[
        Case { name: "3x3 s1 (CIFAR stem)", n: 2, c_in: 3, h: 32, w: 32, c_out: 16, k: 3, stride: 1, pad: 1, groups: 1 },
        Case { name: "3x3 s2 odd size", n: 3, c_in: 16, h: 15, w: 15, c_out: 32, k: 3, stride: 2, pad: 1, groups: 1 },
        Case { name: "1x1 s2 shortcut", n: 2, c_in: 32, h: 8, w: 8, c_out: 64, k: 1, stride: 2, pad: 0, groups: 1 },
        Case { name: "grouped 3x3 (ResNeXt)", n: 2, c_in: 32, h: 9, w: 9, c_out: 64, k: 3, stride: 1, pad: 1, groups: 8 },
        Case { name: "depthwise 3x3 s2", n: 2, c_in: 24, h: 11, w: 11, c_out: 24, k: 3, stride: 2, pad: 1, groups: 24 },
        Case { name: "depthwise 3x3 s1", n: 4, c_in: 96, h: 8, w: 8, c_out: 96, k: 3, stride: 1, pad: 1, groups: 96 },
        Case { name: "depthwise 5x5", n: 2, c_in: 24, h: 7, w: 7, c_out: 24, k: 5, stride: 1, pad: 2, groups: 24 },
        Case { name: "depthwise multiplier 2, s2 odd", n: 3, c_in: 8, h: 9, w: 9, c_out: 16, k: 3, stride: 2, pad: 1, groups: 8 },
        Case { name: "7x7 s2 on 5x5 (padding only taps)", n: 3, c_in: 8, h: 5, w: 5, c_out: 8, k: 7, stride: 2, pad: 3, groups: 1 },
        Case { name: "5x5 s2 non-square", n: 3, c_in: 5, h: 11, w: 7, c_out: 7, k: 5, stride: 2, pad: 2, groups: 1 },
    ];

    /// Random input, kernel and output weights `r` of a case, on the CPU.
    fn conv_operands(c: &Case, rng: &mut SeededRng) -> (Tensor, Tensor, Tensor) {
        let ho = (c.h + 2 * c.pad - c.k) / c.stride + 1;
        let wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
        let x = random(rng, &[c.n, c.c_in, c.h, c.w]);
        let w = random(rng, &[c.c_out, c.c_in / c.groups, c.k, c.k]);
        let r = random(rng, &[c.n, c.c_out, ho, wo]);
        (x, w, r)
    }

    /// `L = Σ conv(x, w)·r` on a device: (y, ∂L/∂x, ∂L/∂w).
    fn conv_pass(c: &Case, x: &Tensor, w: &Tensor, r: &Tensor, dev: &Device) -> (Tensor, Tensor, Tensor) {
        let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
        let wv = Var::from_tensor(&w.to_device(dev).unwrap()).unwrap();
        let y = tfkd_core::conv::conv2d(xv.as_tensor(), wv.as_tensor(), c.pad, c.stride, c.groups).unwrap();
        let loss = (&y * r.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(xv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
        let gw = g.get(wv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
        (y.to_device(&Device::Cpu).unwrap(), gx, gw)
    }

    #[test]
    fn convolutions_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        eprintln!("convolutions on CUDA through {}", tfkd_core::conv::backend(&dev));
        let mut rng = SeededRng::new(7);
        for c in CONV_CASES {
            let (x, w, r) = conv_operands(c, &mut rng);
            let (y0, gx0, gw0) = conv_pass(c, &x, &w, &r, &Device::Cpu);
            // Twice on the GPU: the first call times the algorithms, the
            // second runs the cached choice.
            for round in ["first call", "cached algorithm"] {
                let (y, gx, gw) = conv_pass(c, &x, &w, &r, &dev);
                check(&format!("{} forward ({round})", c.name), &y, &y0, VALUE_TOL);
                check(&format!("{} input gradient ({round})", c.name), &gx, &gx0, GRAD_TOL);
                check(&format!("{} weight gradient ({round})", c.name), &gw, &gw0, GRAD_TOL);
            }
        }
    }

    /// Inputs that are views on the GPU: one that starts one element into
    /// its buffer (contiguous, so cuDNN reads it in place, 4-byte aligned
    /// only) and a transposed one (strided, copied first); forward and both
    /// gradients, twice (the cached algorithm must suit the alignment).
    #[test]
    fn convolutions_of_views_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(19);
        let (n, c, h, w) = (3, 8, 9, 9);
        let big = random(&mut rng, &[n * c * h * w + 1]);
        let kernel = random(&mut rng, &[16, c, 3, 3]);
        let r = random(&mut rng, &[n, 16, 5, 5]);
        let offset = |t: &Tensor| t.narrow(0, 1, n * c * h * w).unwrap().reshape((n, c, h, w)).unwrap();
        let transposed = |t: &Tensor| t.narrow(0, 0, n * c * h * w).unwrap().reshape((n, h, c, w)).unwrap().transpose(1, 2).unwrap();
        type View<'a> = &'a dyn Fn(&Tensor) -> Tensor;
        let views: [(&str, View); 2] = [("offset by one element", &offset), ("transposed", &transposed)];
        for (what, view) in views {
            let run = |d: &Device| {
                let (bv, kv) = (Var::from_tensor(&big.to_device(d).unwrap()).unwrap(), Var::from_tensor(&kernel.to_device(d).unwrap()).unwrap());
                let y = tfkd_core::conv::conv2d(&view(bv.as_tensor()), kv.as_tensor(), 1, 2, 1).unwrap();
                let g = (&y * r.to_device(d).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                [&y, g.get(&bv).unwrap(), g.get(&kv).unwrap()].map(|t| t.to_device(&Device::Cpu).unwrap())
            };
            let want = run(&Device::Cpu);
            for round in ["first call", "cached algorithm"] {
                let got = run(&dev);
                check(&format!("conv of a view {what}: forward ({round})"), &got[0], &want[0], VALUE_TOL);
                check(&format!("conv of a view {what}: input gradient ({round})"), &got[1], &want[1], GRAD_TOL);
                check(&format!("conv of a view {what}: weight gradient ({round})"), &got[2], &want[2], GRAD_TOL);
            }
        }
    }

    #[test]
    fn inference_convolutions_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(8);
        let c = &CONV_CASES[1];
        let x = random(&mut rng, &[c.n, c.c_in, c.h, c.w]);
        let w = random(&mut rng, &[c.c_out, c.c_in / c.groups, c.k, c.k]);
        let y0 = tfkd_core::conv::conv2d(&x, &w, c.pad, c.stride, c.groups).unwrap();
        let y = tfkd_core::conv::conv2d(&x.to_device(&dev).unwrap(), &w.to_device(&dev).unwrap(), c.pad, c.stride, c.groups).unwrap();
        check("untracked forward", &y, &y0, VALUE_TOL);
    }

    #[test]
    fn batch_norm_matches_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(9);
        use tfkd_core::activation::Activation;
        let shapes = [&[4usize, 16, 8, 8][..], &[3, 5, 7, 3], &[8, 12], &[2, 64, 1, 1]];
        // Alone, and with its activation inside the op (ReLU6's bound is
        // crossed: x reaches about 10).
        for (shape, act) in shapes.iter().flat_map(|s| [(s, None), (s, Some(Activation::Relu)), (s, Some(Activation::Relu6))]) {
            let shape: &[usize] = shape;
            let c = shape[1];
            let x = random(&mut rng, shape).affine(3.0, 1.5).unwrap();
            let gamma = random(&mut rng, &[c]);
            let beta = random(&mut rng, &[c]);
            let r = random(&mut rng, shape);
            let run = |d: &Device| {
                let xv = Var::from_tensor(&x.to_device(d).unwrap()).unwrap();
                let gv = Var::from_tensor(&gamma.to_device(d).unwrap()).unwrap();
                let bv = Var::from_tensor(&beta.to_device(d).unwrap()).unwrap();
                let out = match act {
                    None => tfkd_core::norm::batch_norm_train(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), 1e-5).unwrap(),
                    Some(act) => tfkd_core::norm::batch_norm_act_train(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), 1e-5, act).unwrap(),
                };
                let loss = (&out.y * r.to_device(d).unwrap()).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                [
                    cpu(&out.y),
                    cpu(&out.mean),
                    cpu(&out.var),
                    cpu(g.get(xv.as_tensor()).unwrap()),
                    cpu(g.get(gv.as_tensor()).unwrap()),
                    cpu(g.get(bv.as_tensor()).unwrap()),
                ]
            };
            let (want, got) = (run(&Device::Cpu), run(&dev));
            for (i, what) in ["y", "batch mean", "batch variance", "input gradient", "weight gradient", "bias gradient"].iter().enumerate() {
                let tol = if i < 3 { VALUE_TOL } else { GRAD_TOL };
                check(&format!("BatchNorm {shape:?} {act:?} {what}"), &got[i], &want[i], tol);
            }
        }
    }

    /// `act(BN(x) + residual)` in one op: the output, the statistics and
    /// the four gradients (input, residual, γ, β).
    #[test]
    fn batch_norm_with_a_residual_matches_the_cpu() {
        use tfkd_core::activation::Activation;
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(17);
        for (shape, act) in [
            (&[4usize, 16, 8, 8][..], None),
            (&[4, 16, 8, 8], Some(Activation::Relu)),
            (&[3, 5, 7, 3], Some(Activation::Relu6)),
        ] {
            let c = shape[1];
            let x = random(&mut rng, shape).affine(3.0, 1.5).unwrap();
            let s = random(&mut rng, shape).affine(2.0, 0.0).unwrap();
            let (gamma, beta, r) = (random(&mut rng, &[c]), random(&mut rng, &[c]), random(&mut rng, shape));
            let run = |d: &Device| {
                let vars = [&x, &s, &gamma, &beta].map(|t| Var::from_tensor(&t.to_device(d).unwrap()).unwrap());
                let [xv, sv, gv, bv] = &vars;
                let out = tfkd_core::norm::batch_norm_residual_train(xv, gv, bv, 1e-5, sv, act).unwrap();
                let g = (&out.y * r.to_device(d).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                let mut all = vec![cpu(&out.y), cpu(&out.mean), cpu(&out.var)];
                all.extend(vars.iter().map(|v| cpu(g.get(v).unwrap())));
                all
            };
            let (want, got) = (run(&Device::Cpu), run(&dev));
            let names = ["y", "batch mean", "batch variance", "input gradient", "residual gradient", "weight gradient", "bias gradient"];
            for (i, what) in names.iter().enumerate() {
                let tol = if i < 3 { VALUE_TOL } else { GRAD_TOL };
                check(&format!("BatchNorm + residual {shape:?} {act:?} {what}"), &got[i], &want[i], tol);
            }
        }
    }

    /// The BatchNorm module's output written into a projection shortcut's
    /// buffer (`forward_into_residual_act_t`, cuDNN then tfkd's add-clamp in
    /// place): output, running statistics and gradients against the CPU.
    #[test]
    fn batch_norm_into_the_residual_matches_the_cpu() {
        use tfkd_core::activation::Activation;
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(18);
        // 6 channels: β of the packed [γ; β] is not 16-byte aligned.
        for (c, act) in [(16, None), (16, Some(Activation::Relu)), (6, Some(Activation::Relu))] {
            let shape = [4usize, c, 8, 8];
            let x = random(&mut rng, &shape).affine(3.0, 1.5).unwrap();
            let s = random(&mut rng, &shape).affine(2.0, 0.0).unwrap();
            let r = random(&mut rng, &shape);
            let run = |d: &Device| {
                let vm = candle_nn::VarMap::new();
                let bn = tfkd_core::norm::BatchNorm::new(c, 1e-5, 0.1, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, d)).unwrap();
                let (xv, sv) = (Var::from_tensor(&x.to_device(d).unwrap()).unwrap(), Var::from_tensor(&s.to_device(d).unwrap()).unwrap());
                let residual = (sv.as_tensor() * 2.0).unwrap();
                let y = bn.forward_into_residual_act_t(&xv, residual, true, act).unwrap();
                let g = (&y * r.to_device(d).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let (gamma, beta) = bn.weight_and_bias();
                let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                let mut all = vec![cpu(&y), cpu(bn.running_mean()), cpu(bn.running_var())];
                all.extend([g.get(&xv), g.get(&sv), g.get(gamma), g.get(beta)].map(|t| cpu(t.unwrap())));
                all
            };
            let (want, got) = (run(&Device::Cpu), run(&dev));
            let names = ["y", "running mean", "running variance", "input gradient", "residual gradient", "weight gradient", "bias gradient"];
            for (i, what) in names.iter().enumerate() {
                let tol = if i < 3 { VALUE_TOL } else { GRAD_TOL };
                check(&format!("BatchNorm into the residual, {c} channels, {act:?} {what}"), &got[i], &want[i], tol);
            }
        }
    }

    #[test]
    fn batch_norm_running_statistics_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(10);
        let x = random(&mut rng, &[6, 8, 5, 5]).affine(2.0, 0.5).unwrap();
        let run = |d: &Device| {
            let vm = candle_nn::VarMap::new();
            let bn = tfkd_core::norm::BatchNorm::new(8, 1e-5, 0.1, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, d)).unwrap();
            let xd = x.to_device(d).unwrap();
            for act in [None, Some(tfkd_core::activation::Activation::Relu), None] {
                bn.forward_act_t(&xd, true, act).unwrap();
            }
            let eval = bn.forward_t(&xd, false).unwrap();
            [bn.running_mean().clone(), bn.running_var().clone(), eval].map(|t| t.to_device(&Device::Cpu).unwrap())
        };
        let (want, got) = (run(&Device::Cpu), run(&dev));
        for (i, what) in ["running mean", "running variance", "evaluation output"].iter().enumerate() {
            check(what, &got[i], &want[i], VALUE_TOL);
        }
    }

    /// `L = Σ op(x)·r`: (op(x), ∂L/∂x) on a device.
    fn unary_pass(op: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, dev: &Device) -> (Tensor, Tensor) {
        let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
        let y = op(xv.as_tensor());
        let r = Tensor::ones_like(&y).unwrap().cumsum(y.rank() - 1).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (y.to_device(&Device::Cpu).unwrap(), g.get(xv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap())
    }

    #[test]
    fn activations_pooling_and_shuffle_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(11);
        let x = (random(&mut rng, &[3, 6, 9, 9]) * 4.0).unwrap();
        type UnaryOp = Box<dyn Fn(&Tensor) -> Tensor>;
        let ops: Vec<(&str, UnaryOp)> = vec![
            ("relu", Box::new(|t| tfkd_core::activation::relu(t).unwrap())),
            ("relu6", Box::new(|t| tfkd_core::activation::relu6(t).unwrap())),
            ("max pool 2x2 s2", Box::new(|t| tfkd_core::pool::max_pool2d(t, 2, 2, 0).unwrap())),
            ("max pool 3x3 s2 p1", Box::new(|t| tfkd_core::pool::max_pool2d(t, 3, 2, 1).unwrap())),
            ("avg pool 3x3 s1", Box::new(|t| t.avg_pool2d_with_stride(3, 1).unwrap())),
            ("cat + channel shuffle", Box::new(|t| tfkd_core::shuffle::cat_shuffle(t, &(t * 2.0).unwrap()).unwrap())),
            (
                "conv bias (input side)",
                Box::new(|t| {
                    let b = Tensor::arange(0f32, 6.0, t.device()).unwrap();
                    tfkd_core::conv::add_channel_bias(t, &b).unwrap()
                }),
            ),
        ];
        for (name, op) in &ops {
            let (y0, g0) = unary_pass(op.as_ref(), &x, &Device::Cpu);
            let (y, g) = unary_pass(op.as_ref(), &x, &dev);
            check(&format!("{name} forward"), &y, &y0, VALUE_TOL);
            check(&format!("{name} gradient"), &g, &g0, GRAD_TOL);
        }
    }

    /// `precision = "bf16"`: bf16 convolutions (depthwise too) and BatchNorm
    /// over bf16 activations with f32 parameters track the f32 CPU results
    /// to bf16's precision (8 bits of mantissa).
    #[test]
    fn bf16_convolutions_and_batch_norm_track_f32() {
        let Some(dev) = gpu() else { return };
        const BF16_TOL: f64 = 3e-2;
        let mut rng = SeededRng::new(14);
        for c in [&CONV_CASES[1], &CONV_CASES[3], &CONV_CASES[4]] {
            let (x, w, r) = conv_operands(c, &mut rng);
            let (y0, gx0, gw0) = conv_pass(c, &x, &w, &r, &Device::Cpu);
            let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let (y, gx, gw) = conv_pass(c, &half(&x), &half(&w), &half(&r), &dev);
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            check(&format!("{} bf16 forward", c.name), &f32(&y), &y0, BF16_TOL);
            check(&format!("{} bf16 input gradient", c.name), &f32(&gx), &gx0, BF16_TOL);
            check(&format!("{} bf16 weight gradient", c.name), &f32(&gw), &gw0, BF16_TOL);
        }
        let x = random(&mut rng, &[4, 16, 8, 8]).affine(3.0, 1.5).unwrap();
        let (gamma, beta) = (random(&mut rng, &[16]), random(&mut rng, &[16]));
        let want = tfkd_core::norm::batch_norm_train(&x, &gamma, &beta, 1e-5).unwrap();
        let got = tfkd_core::norm::batch_norm_train(
            &x.to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap(),
            &gamma.to_device(&dev).unwrap(),
            &beta.to_device(&dev).unwrap(),
            1e-5,
        )
        .unwrap();
        assert_eq!(got.y.dtype(), DType::BF16, "BatchNorm keeps the activations' dtype");
        check("bf16 BatchNorm y", &got.y.to_dtype(DType::F32).unwrap(), &want.y, BF16_TOL);
        check("bf16 BatchNorm mean", &got.mean.to_dtype(DType::F32).unwrap(), &want.mean, BF16_TOL);
        check("bf16 BatchNorm variance", &got.var.to_dtype(DType::F32).unwrap(), &want.var, BF16_TOL);
    }

    #[test]
    fn the_conv_bias_gradient_matches_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(13);
        let y = random(&mut rng, &[4, 7, 5, 3]);
        let b = random(&mut rng, &[7]);
        let r = random(&mut rng, &[4, 7, 5, 3]);
        let run = |d: &Device| {
            let bv = Var::from_tensor(&b.to_device(d).unwrap()).unwrap();
            let out = tfkd_core::conv::add_channel_bias(&y.to_device(d).unwrap(), bv.as_tensor()).unwrap();
            let g = (&out * r.to_device(d).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            (out.to_device(&Device::Cpu).unwrap(), g.get(bv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap())
        };
        let ((y0, g0), (y1, g1)) = (run(&Device::Cpu), run(&dev));
        check("conv bias forward", &y1, &y0, VALUE_TOL);
        check("conv bias gradient", &g1, &g0, GRAD_TOL);
    }

    /// A biased convolution with the bias added in place on the GPU
    /// (`conv2d_with_bias`), and with ReLU / ReLU6 in the same op
    /// (`conv2d_with_bias_act`, AlexNet's): output and the three gradients
    /// against the CPU.
    #[test]
    fn the_conv_with_bias_in_place_matches_the_cpu() {
        use tfkd_core::activation::Activation;
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(14);
        // Dense stride 2 (cuDNN), and depthwise (tfkd's kernels).
        let cases = [([4, 6, 9, 7], [5, 6, 3, 3], 1, 2, 1), ([3, 8, 9, 9], [8, 1, 3, 3], 1, 1, 8)];
        for ((x_dims, w_dims, p, s, g), act) in cases.into_iter().flat_map(|c| [None, Some(Activation::Relu), Some(Activation::Relu6)].map(|a| (c, a))) {
            let (x, w, b) = (random(&mut rng, &x_dims), random(&mut rng, &w_dims), random(&mut rng, &[w_dims[0]]));
            let run = |d: &Device| {
                let vars: Vec<Var> = [&x, &w, &b].iter().map(|t| Var::from_tensor(&t.to_device(d).unwrap()).unwrap()).collect();
                let x_in = (vars[0].as_tensor() * 1.0).unwrap();
                let out = match act {
                    None => tfkd_core::conv::conv2d_with_bias(&x_in, &vars[1], &vars[2], p, s, g).unwrap(),
                    Some(a) => tfkd_core::conv::conv2d_with_bias_act(&x_in, &vars[1], &vars[2], a, p, s, g).unwrap(),
                };
                let r = Tensor::ones(out.dims(), DType::F32, d).unwrap().affine(0.5, 0.25).unwrap();
                let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let mut all = vec![out.to_device(&Device::Cpu).unwrap()];
                all.extend(vars.iter().map(|v| grads.get(v).unwrap().to_device(&Device::Cpu).unwrap()));
                all
            };
            let (cpu, gpu_) = (run(&Device::Cpu), run(&dev));
            check(&format!("conv with bias and {act:?}, groups {g}: forward"), &gpu_[0], &cpu[0], VALUE_TOL);
            for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
                check(&format!("conv with bias and {act:?}, groups {g}: {name}"), &gpu_[i + 1], &cpu[i + 1], GRAD_TOL);
            }
        }
    }

    /// A convolution's output summed with a residual, in place on the GPU
    /// (`conv2d_add` into the output, `conv2d_accumulate` into the residual;
    /// Wide ResNet's blocks): output and the three gradients against the CPU,
    /// on cuDNN and on tfkd's depthwise kernels.
    #[test]
    fn the_residual_sums_in_place_match_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(15);
        for (x_dims, w_dims, p, s, g) in [([4, 6, 9, 7], [5, 6, 3, 3], 1, 2, 1), ([3, 8, 9, 9], [8, 1, 3, 3], 1, 1, 8)] {
            let (x, w) = (random(&mut rng, &x_dims), random(&mut rng, &w_dims));
            let out_dims = [x_dims[0], w_dims[0], (x_dims[2] + 2 * p - 3) / s + 1, (x_dims[3] + 2 * p - 3) / s + 1];
            let src = random(&mut rng, &out_dims);
            for accumulate in [false, true] {
                let run = |d: &Device| {
                    let vars: Vec<Var> = [&x, &w, &src].iter().map(|t| Var::from_tensor(&t.to_device(d).unwrap()).unwrap()).collect();
                    let x_in = (vars[0].as_tensor() * 1.0).unwrap();
                    let r = (vars[2].as_tensor() * 2.0).unwrap();
                    let out = if accumulate {
                        tfkd_core::conv::conv2d_accumulate(r, &x_in, &vars[1], p, s, g).unwrap()
                    } else {
                        tfkd_core::conv::conv2d_add(&x_in, &vars[1], &r, p, s, g).unwrap()
                    };
                    let up = Tensor::ones(out.dims(), DType::F32, d).unwrap().cumsum(3).unwrap();
                    let grads = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut all = vec![out.to_device(&Device::Cpu).unwrap()];
                    all.extend(vars.iter().map(|v| grads.get(v).unwrap().to_device(&Device::Cpu).unwrap()));
                    all
                };
                let (cpu, gpu_) = (run(&Device::Cpu), run(&dev));
                let what = if accumulate { "conv accumulated into its residual" } else { "conv plus residual" };
                check(&format!("{what} forward, groups {g}"), &gpu_[0], &cpu[0], VALUE_TOL);
                for (i, name) in ["dx", "dw", "dresidual"].iter().enumerate() {
                    check(&format!("{what} {name}, groups {g}"), &gpu_[i + 1], &cpu[i + 1], GRAD_TOL);
                }
            }
        }
    }

    /// DenseNet's `cat([x, conv(h)], 1)` as one op (`cat_conv2d`, cuDNN):
    /// output and the three gradients against the CPU.
    #[test]
    fn the_concatenated_conv_matches_the_cpu() {
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(19);
        let (x, h, w) = (random(&mut rng, &[4, 6, 8, 8]), random(&mut rng, &[4, 5, 8, 8]), random(&mut rng, &[3, 5, 3, 3]));
        let run = |d: &Device| {
            let vars: Vec<Var> = [&x, &h, &w].iter().map(|t| Var::from_tensor(&t.to_device(d).unwrap()).unwrap()).collect();
            let (x_in, h_in) = ((vars[0].as_tensor() * 1.0).unwrap(), (vars[1].as_tensor() * 1.0).unwrap());
            let out = tfkd_core::conv::cat_conv2d(&x_in, &h_in, &vars[2], 1, 1, 1).unwrap();
            let r = Tensor::ones(out.dims(), DType::F32, d).unwrap().cumsum(3).unwrap();
            let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![out.to_device(&Device::Cpu).unwrap()];
            all.extend(vars.iter().map(|v| grads.get(v).unwrap().to_device(&Device::Cpu).unwrap()));
            all
        };
        let (cpu, gpu_) = (run(&Device::Cpu), run(&dev));
        check("concatenated conv forward", &gpu_[0], &cpu[0], VALUE_TOL);
        for (i, name) in ["dx", "dh", "dw"].iter().enumerate() {
            check(&format!("concatenated conv {name}"), &gpu_[i + 1], &cpu[i + 1], GRAD_TOL);
        }
    }

    /// SGD's in-place GPU update against the CPU's candle ops, over steps
    /// that create, update and (Nesterov) use the momentum buffer, and a
    /// checkpointed buffer restored mid-way.
    #[test]
    fn optimizer_steps_match_the_cpu() {
        use tfkd_core::optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(15);
        let configs = [
            OptimizerConfig::Sgd(SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 5e-4, nesterov: false }),
            OptimizerConfig::Sgd(SgdConfig { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-3, nesterov: true }),
            OptimizerConfig::Sgd(SgdConfig { lr: 0.2, momentum: 0.5, dampening: 0.1, weight_decay: 0.0, nesterov: false }),
            OptimizerConfig::Sgd(SgdConfig { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 5e-4, nesterov: false }),
            OptimizerConfig::Adam(AdamConfig::default()),
            OptimizerConfig::Adam(AdamConfig { lr: 0.01, weight_decay: 1e-2, ..AdamConfig::default() }),
        ];
        // Three parameters in one step: one larger than a kernel piece (so
        // split into several), a small one, and one without a gradient in
        // the second step (skipped, as PyTorch skips `grad is None`).
        let shapes: [&[usize]; 3] = [&[130, 70], &[7, 5], &[3]];
        for config in configs {
            let p0: Vec<Tensor> = shapes.iter().map(|s| random(&mut rng, s)).collect();
            let grads: Vec<Vec<Tensor>> = (0..4).map(|_| shapes.iter().map(|s| random(&mut rng, s)).collect()).collect();
            let run = |d: &Device| {
                let vars: Vec<Var> = p0.iter().map(|p| Var::from_tensor(&p.to_device(d).unwrap()).unwrap()).collect();
                let named = vars.iter().enumerate().map(|(i, v)| (format!("w{i}"), v.clone())).collect();
                let mut opt = Optimizer::new(named, config).unwrap();
                for (step, gs) in grads.iter().enumerate() {
                    if step == 2 {
                        // A resume: the state goes through a checkpoint.
                        let state = opt.state().into_iter().map(|(k, t)| (k, t.to_device(&Device::Cpu).unwrap())).collect();
                        opt.load_state(state).unwrap();
                    }
                    let mut loss = Tensor::zeros((), candle_core::DType::F32, d).unwrap();
                    for (i, (v, g)) in vars.iter().zip(gs).enumerate() {
                        if step == 1 && i == 2 {
                            continue;
                        }
                        loss = (loss + (v.as_tensor() * g.to_device(d).unwrap()).unwrap().sum_all().unwrap()).unwrap();
                    }
                    opt.backward_step(&loss).unwrap();
                }
                vars.iter().map(|v| v.as_tensor().to_device(&Device::Cpu).unwrap()).collect::<Vec<_>>()
            };
            let (want, got) = (run(&Device::Cpu), run(&dev));
            for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                check(&format!("{config:?}: parameter {i}"), got, want, VALUE_TOL);
            }
        }
    }

    /// Labels on the GPU are not read before the loss kernel; a bad one
    /// still comes back as the error naming it, from every fused loss.
    #[test]
    fn a_label_out_of_range_on_the_gpu_is_named() {
        use tfkd_core::loss::{KdLoss, LabelSmoothing, VirtualTeacherLoss};
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(16);
        let logits = random(&mut rng, &[4, 10]).to_device(&dev).unwrap();
        let teacher = random(&mut rng, &[4, 10]).to_device(&dev).unwrap();
        for labels in [
            Tensor::new(&[3u32, 10, 0, 7], &dev).unwrap(),
            Tensor::new(&[3i64, -1, 0, 7], &dev).unwrap(),
        ] {
            let errors = [
                tfkd_core::loss::cross_entropy(&logits, &labels).err(),
                LabelSmoothing::official().forward(&logits, &labels).err(),
                KdLoss::official(0.95, 20.0).forward(&logits, &teacher, &labels).err(),
                VirtualTeacherLoss::as_coded(0.1, 20.0, 100.0).forward(&logits, &labels).err(),
            ];
            for e in errors {
                let e = e.expect("a bad label was accepted");
                assert!(matches!(e, tfkd_core::Error::LabelOutOfRange { index: 1, num_classes: 10, .. }), "{e}");
            }
        }
    }

    #[test]
    fn losses_and_their_gradients_match_the_cpu() {
        use tfkd_core::loss::{KdLoss, LabelSmoothing, VirtualTeacherLoss};
        let Some(dev) = gpu() else { return };
        let mut rng = SeededRng::new(12);
        for (n, k) in [(7usize, 10usize), (128, 100), (3, 200)] {
            let student = (random(&mut rng, &[n, k]) * 3.0).unwrap();
            let teacher = (random(&mut rng, &[n, k]) * 3.0).unwrap();
            let labels = Tensor::from_vec((0..n).map(|_| rng.below(k) as u32).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
            type LossFn = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor>;
            let losses: Vec<(&str, LossFn)> = vec![
                ("cross-entropy", Box::new(|s, _, l| tfkd_core::loss::cross_entropy(s, l).unwrap())),
                ("LSR", Box::new(|s, _, l| LabelSmoothing::official().forward(s, l).unwrap().total)),
                ("KD", Box::new(|s, t, l| KdLoss::official(0.95, 20.0).forward(s, t, l).unwrap().total)),
                ("Tf-KD_self", Box::new(|s, t, l| KdLoss::self_training(0.6, 20.0, 100.0).forward(s, t, l).unwrap().total)),
                ("Tf-KD_reg", Box::new(|s, _, l| VirtualTeacherLoss::as_coded(0.1, 20.0, 100.0).forward(s, l).unwrap().total)),
            ];
            for (name, loss) in &losses {
                let run = |d: &Device| {
                    let sv = Var::from_tensor(&student.to_device(d).unwrap()).unwrap();
                    let v = loss(sv.as_tensor(), &teacher.to_device(d).unwrap(), &labels.to_device(d).unwrap());
                    let g = v.backward().unwrap();
                    (v.to_device(&Device::Cpu).unwrap(), g.get(sv.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap())
                };
                let ((v0, g0), (v, g)) = (run(&Device::Cpu), run(&dev));
                check(&format!("{name} ({n}x{k}) value"), &v, &v0, VALUE_TOL);
                check(&format!("{name} ({n}x{k}) gradient"), &g, &g0, GRAD_TOL);
            }
        }
    }
}
