//! Embedding equimodal in a program that owns its wgpu device.
//!
//! The host creates its own Instance / Adapter / Device / Queue (any adapter works, Mesa's
//! software Vulkan "llvmpipe" included: `WGPU_BACKEND=vulkan WGPU_ADAPTER_NAME=llvmpipe`),
//! hands clones of the device and queue to `equimodal::Gpu::from_device`, and trains a
//! linear regression `y = x·w + b` with the engine's ops and its SGD optimizer (updates run
//! in place on the host's device). The loss is read back every 10 steps. Afterwards the
//! host keeps using its own device: it copies the learned weights out of the parameter's
//! buffer into a buffer of its own, with its own encoder, and maps it.
//!
//! Run: `cargo run --release --example embed_wgpu`
use equimodal::ops;
use equimodal::optim::{Optimizer, Param, Sgd, SgdConfig};
use equimodal::{Gpu, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ---- the host's own wgpu setup --------------------------------------------------
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let want = std::env::var("WGPU_ADAPTER_NAME").unwrap_or_default().to_lowercase();
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| !want.is_empty() && a.get_info().name.to_lowercase().contains(&want));
    let adapter = match adapter {
        Some(a) => a,
        None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?,
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("host adapter: {}", adapter.get_info().name);

    // ---- the engine on the host's device ----------------------------------------------
    let gpu = Gpu::from_device(device.clone(), queue.clone(), adapter.get_info());
    let (n, d) = (200usize, 3usize);
    let true_w = [1.5f32, -2.0, 0.5];
    let true_b = 0.3f32;
    let mut seed = 12345u32;
    let mut rand = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    };
    let xs: Vec<f32> = (0..n * d).map(|_| rand()).collect();
    let ys: Vec<f32> = (0..n).map(|i| (0..d).map(|j| xs[i * d + j] * true_w[j]).sum::<f32>() + true_b).collect();
    let x = Tensor::from_slice(&gpu, &xs, &[n, d])?;
    let y = Tensor::from_slice(&gpu, &ys, &[n])?;
    let w = Param::new("w", Tensor::zeros(&gpu, &[1, d])?.requires_grad());
    let b = Param::new("b", Tensor::zeros(&gpu, &[1])?.requires_grad());
    let mut opt = Sgd::new(&[w.clone(), b.clone()], SgdConfig { lr: 0.3, momentum: 0.5, ..Default::default() })?;

    let mut losses = Vec::new();
    for step in 0..=50 {
        // pred = sum_j x[:, j] * w[j] + b ;  loss = mean((pred - y)^2)
        let pred = ops::add(&ops::sum(&ops::mul(&x, &w.tensor)?, &[1], false)?, &b.tensor)?;
        let loss = ops::mean_all(&ops::square(&ops::sub(&pred, &y)?)?)?;
        if step % 10 == 0 {
            let l = loss.item()?; // the only readbacks: every 10 steps
            println!("step {step:3}  loss {l:.6}");
            losses.push(l);
        }
        if step < 50 {
            let grads = loss.backward()?;
            opt.step(&grads)?;
        }
    }
    assert!(losses.last().unwrap() < &(losses[0] * 0.05), "loss did not decrease: {losses:?}");

    // ---- the host keeps using its own device --------------------------------------------
    gpu.flush()?; // submit the engine's recorded work before the host's own submission
    let bytes = (d * 4) as u64;
    let mine = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host readback"),
        size: bytes,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("host encoder") });
    // a tensor is a range of one of the engine's buffers: (buffer, offset, size)
    let range = w.tensor.buffer();
    enc.copy_buffer_to_buffer(range.buffer(), range.offset(), &mine, 0, bytes);
    queue.submit(Some(enc.finish()));
    mine.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let view = mine.slice(..).get_mapped_range().map_err(|e| format!("map: {e:?}"))?;
    let learned: Vec<f32> = bytemuck::pod_collect_to_vec(&view);
    drop(view);
    mine.unmap();
    println!("learned w (read by the host) = {learned:?}, true w = {true_w:?}");
    for (l, t) in learned.iter().zip(&true_w) {
        assert!((l - t).abs() < 0.05, "w not learned: {learned:?}");
    }
    Ok(())
}
