//! End to end on the engine alone: a small MLP learns a seeded synthetic task (loss and
//! accuracy thresholds), with one submit per training step and flat memory across steps.
//! Its own binary, so the memory accounting sees no other binary's tensors; each memory test
//! runs on a context of its own.
mod common;
use common::*;
use equimodal::nn::{Ctx, Linear, Module};
use equimodal::optim::{Optimizer, Sgd, SgdConfig};
use equimodal::{ops, Tensor};
use rand::SeedableRng;

#[test]
fn mlp_learns_with_one_submit_per_step_and_flat_memory() {
    let gpu = gpu();
    // 4 Gaussian clusters in 10-D (not separable by one coordinate), 600 samples
    let (n, d, k) = (600usize, 10usize, 4usize);
    let mut rng = Rng::new(42);
    let centers: Vec<Vec<f64>> = (0..k).map(|_| (0..d).map(|_| 1.5 * rng.normal()).collect()).collect();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..n {
        let c = i % k;
        for j in 0..d {
            xs.push((centers[c][j] + rng.normal()) as f32);
        }
        ys.push(c as u32);
    }
    let x = Tensor::from_slice(&gpu, &xs, &[n, d]).unwrap();
    let y = ops::labels(&gpu, &ys, k).unwrap();

    let mut init = rand::rngs::StdRng::seed_from_u64(7);
    let l1 = Linear::new(&gpu, "l1", d, 32, true, &mut init).unwrap();
    let l2 = Linear::new(&gpu, "l2", 32, k, true, &mut init).unwrap();
    let mut params = l1.params();
    params.extend(l2.params());
    let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
    let ctx = Ctx::train();
    let step = |opt: &mut Sgd| -> Tensor {
        let h = ops::relu(&l1.forward(&x, &ctx).unwrap()).unwrap();
        let logits = l2.forward(&h, &ctx).unwrap();
        let loss = ops::cross_entropy(&logits, ops::Target::Hard(&y), None).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads).unwrap();
        loss.detach()
    };
    let first = step(&mut opt).item().unwrap();
    // warm up the pool, then measure (one loss tensor alive at both readings)
    let mut last = None;
    for _ in 0..5 {
        last = Some(step(&mut opt));
        gpu.step_boundary(2).unwrap();
    }
    gpu.synchronize().unwrap();
    let mem0 = gpu.memory();
    let (submits0, _) = gpu.counters();
    let steps = 60;
    for _ in 0..steps {
        last = Some(step(&mut opt));
        gpu.step_boundary(2).unwrap();
    }
    let (submits1, _) = gpu.counters();
    assert_eq!(submits1 - submits0, steps as u64, "one submit per training step, no readback inside a step");
    gpu.synchronize().unwrap();
    let mem1 = gpu.memory();
    assert_eq!(mem1.in_use, mem0.in_use, "memory in use grew: {mem0:?} -> {mem1:?}");
    assert_eq!(mem1.in_use + mem1.cached, mem0.in_use + mem0.cached, "pool size changed: {mem0:?} -> {mem1:?}");
    assert_eq!(mem1.allocations, mem0.allocations, "new buffers were created after warm-up: {mem0:?} -> {mem1:?}");

    let final_loss = last.unwrap().item().unwrap();
    assert!(first > 1.0, "initial loss {first}");
    assert!(final_loss < 0.25, "final loss {final_loss} (from {first})");
    let _ng = equimodal::autograd::no_grad();
    let logits = l2.forward(&ops::relu(&l1.forward(&x, &Ctx::eval()).unwrap()).unwrap(), &Ctx::eval()).unwrap();
    let pred = ops::argmax(&logits).unwrap().to_vec_u32().unwrap();
    let acc = pred.iter().zip(&ys).filter(|(a, b)| a == b).count() as f64 / n as f64;
    assert!(acc > 0.93, "training accuracy {acc}");
}

#[test]
fn memory_accounting_like_pytorch() {
    // a context of its own: other tests of this binary allocate concurrently on the shared one
    let g = equimodal::Gpu::new(equimodal::GpuOptions::default()).unwrap();
    let base = g.memory();
    assert_eq!((base.allocated, base.reserved), (0, 0));
    // allocated: exact sizes (rounded up to 4 bytes); in use: blocks (multiples of 16 in the
    // small pool); reserved: the small pool's first segment
    let a = Tensor::zeros(&g, &[1000]).unwrap(); // 4000 bytes -> block 4000
    let b = Tensor::zeros(&g, &[3, 7]).unwrap(); // 84 bytes -> block 96
    let m = g.memory();
    assert_eq!(m.allocated, 4000 + 84);
    assert_eq!(m.in_use, 4000 + 96);
    assert_eq!((m.reserved, m.segments), (equimodal::gpu::SMALL_SEGMENT_MIN, 1));
    assert_eq!(m.reserved, m.in_use + m.cached);
    assert_eq!((m.peak_allocated, m.peak_reserved), (m.allocated, m.reserved));
    assert!(a.buffer().same_buffer(b.buffer()) && (a.buffer().offset(), b.buffer().offset()) == (0, 4000));
    // freeing keeps the segment reserved and the peaks where they were
    drop(a);
    let m2 = g.memory();
    assert_eq!((m2.allocated, m2.in_use), (84, 96));
    assert_eq!(m2.reserved, m.reserved, "a freed block stays reserved");
    assert_eq!(m2.peak_allocated, 4084);
    // a new high-water mark starts from the current figures
    g.reset_peak_memory();
    let m3 = g.memory();
    assert_eq!((m3.peak_allocated, m3.peak_reserved), (84, m2.reserved));
    // best fit: 3600 bytes go into a's freed 4000, not the larger free rest of the segment
    let c = Tensor::zeros(&g, &[900]).unwrap();
    let m4 = g.memory();
    assert_eq!((m4.allocated, m4.reserved, m4.peak_allocated), (3684, m2.reserved, 3684));
    assert_eq!(c.buffer().offset(), 0);
    drop((b, c));
    g.synchronize().unwrap();
    g.trim_memory();
    let m5 = g.memory();
    assert_eq!((m5.allocated, m5.reserved, m5.segments), (0, 0, 0), "trim returns free segments to the driver");
}

/// Reserved memory within 15 % of allocated, and flat: the AUG, joint and AIM training steps
/// of the synthetic presets, 1,000 steps each on a context of their own (no canary: its
/// slack would count against the ratio). The peaks cover every step from the first, model
/// and optimizer state included; after 20 steps no segment is created and the peaks stay
/// where they were.
#[test]
fn reserved_memory_stays_within_15_percent_of_allocated_and_flat_for_1000_steps() {
    use equimodal::{config, data, methods, train};
    for name in ["joint", "aug", "aim"] {
        let mut o = test_options();
        o.pool_canary = false;
        let g = equimodal::Gpu::new(o).unwrap();
        let path = std::path::PathBuf::from(format!("configs/synthetic_{name}.toml"));
        let sets: Vec<String> = ["data.n_train=128", "data.n_test=32", "train.workers=1"].iter().map(|s| s.to_string()).collect();
        let cfg = config::load(Some(&path), &sets).unwrap().0;
        let ds: std::sync::Arc<dyn data::Dataset> = std::sync::Arc::from(data::build(&cfg.data).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut m = methods::build(&g, &cfg.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
        let mut opt = train::build_optimizer(&cfg, m.trainable()).unwrap();
        let loader = data::Loader::new(ds.clone(), data::Split::Train, data::LoaderConfig::eval(cfg.train.batch_size)).unwrap();
        let batches: Vec<_> = loader.map(|b| train::upload_batch(&g, &b.unwrap(), ds.num_classes()).unwrap()).collect();
        m.begin_epoch(0).unwrap();
        if name == "aim" {
            // at epoch 0 every strength is 0 and the auxiliary forward is skipped: restore
            // positive strengths, so the steps measured are AIM's whole step
            let state = serde_json::json!({"proto_ready": false, "dominant": 1, "weak": 0, "strength": [0.5, 0.5], "ratio": [1.0, 1.0]});
            m.restore(&state, opt.as_mut()).unwrap();
            assert!(m.state()["strength"].as_array().unwrap().iter().all(|s| s.as_f64() == Some(0.5)), "{}", m.state());
        }
        let mut run = |steps: std::ops::Range<usize>| {
            for i in steps {
                m.train_step(&batches[i % batches.len()], opt.as_mut(), 0).unwrap();
                g.step_boundary(2).unwrap();
            }
            g.synchronize().unwrap();
            g.memory()
        };
        let warm = run(0..20);
        let end = run(20..1000);
        let ratio = end.peak_reserved as f64 / end.peak_allocated as f64;
        assert!(ratio <= 1.15, "{name}: reserved peak {} is {ratio:.3} x the allocated peak {}", end.peak_reserved, end.peak_allocated);
        assert_eq!((end.peak_reserved, end.allocations), (warm.peak_reserved, warm.allocations), "{name}: memory grew after warm-up: {warm:?} -> {end:?}");
        assert_eq!(end.peak_allocated, warm.peak_allocated, "{name}: live tensors grew after warm-up");
        eprintln!("{name}: allocated peak {} B, reserved peak {} B ({ratio:.3} x), {} segments", end.peak_allocated, end.peak_reserved, end.segments);
    }
}
