//! End to end on the engine alone: a small MLP learns a seeded synthetic task (loss and
//! accuracy thresholds), with one submit per training step and flat memory across steps.
//! One test in its own binary, so the memory accounting sees no other test's tensors.
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
    // exact sizes (rounded up to 4 bytes) for allocated; pool buckets for reserved
    let a = Tensor::zeros(&g, &[1000]).unwrap(); // 4000 bytes -> bucket 4096
    let b = Tensor::zeros(&g, &[3, 7]).unwrap(); // 84 bytes -> bucket 256
    let m = g.memory();
    assert_eq!(m.allocated, 4000 + 84);
    assert_eq!(m.reserved, equimodal::gpu::bucket_size(4000) + equimodal::gpu::bucket_size(84));
    assert_eq!(m.reserved, m.in_use + m.cached);
    assert_eq!((m.peak_allocated, m.peak_reserved), (m.allocated, m.reserved));
    // freeing keeps the buffers reserved (cached) and the peaks where they were
    drop(a);
    let m2 = g.memory();
    assert_eq!(m2.allocated, 84);
    assert_eq!(m2.reserved, m.reserved, "a freed buffer stays reserved in the cache");
    assert_eq!(m2.peak_allocated, 4084);
    // a new high-water mark starts from the current figures
    g.reset_peak_memory();
    let m3 = g.memory();
    assert_eq!((m3.peak_allocated, m3.peak_reserved), (84, m2.reserved));
    // a reused bucket does not reserve more
    let c = Tensor::zeros(&g, &[900]).unwrap(); // 3600 bytes -> bucket 4096 (the cached one)
    let m4 = g.memory();
    assert_eq!((m4.allocated, m4.reserved, m4.peak_allocated), (3684, m2.reserved, 3684));
    drop((b, c));
    g.synchronize().unwrap();
    g.trim_memory();
    let m5 = g.memory();
    assert_eq!((m5.allocated, m5.reserved), (0, 0), "trim returns the cache to the driver");
}
