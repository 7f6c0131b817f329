//! Running out of memory is an error, not a crash: a buffer beyond the memory limit (a
//! stand-in for a full device) first releases the pool's cache, then fails with
//! `Error::OutOfMemory` naming the request, and the context stays usable.
use crate::common;
use equimodal::gpu::SMALL_SEGMENT_MIN;
use equimodal::{Error, Gpu, Tensor};

fn limited(limit: u64) -> Gpu {
    let mut o = common::test_options();
    o.pool_canary = false; // exact buffer sizes: the canary's slack would move the limit
    o.memory_limit = Some(limit);
    Gpu::new(o).unwrap()
}

#[test]
fn a_buffer_beyond_the_limit_is_a_typed_error_after_the_cache_is_released() {
    let g = limited(1 << 20);
    let a = Tensor::zeros(&g, &[128 * 1024]).unwrap(); // 512 KiB
    let b = Tensor::zeros(&g, &[96 * 1024]).unwrap(); // 384 KiB
    drop(a); // 512 KiB cached
    assert_eq!(g.memory().cached, 512 * 1024);
    // 640 KiB: fits only once the cached 512 KiB go back to the driver
    let c = Tensor::zeros(&g, &[160 * 1024]).unwrap();
    assert_eq!(g.memory().cached, 0, "the cache was released to make room");
    assert_eq!(g.memory().reserved, (384 + 640) * 1024);
    // nothing left to release: a typed error naming the shape and the request
    let err = Tensor::zeros(&g, &[64 * 1024]).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { bytes: 262144, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("[65536]") && msg.contains("memory limit"), "{msg}");
    // the context still works: freeing makes room again, and the limit can be lifted
    drop(b);
    let d = Tensor::zeros(&g, &[64 * 1024]).unwrap();
    assert_eq!(d.to_vec().unwrap().len(), 64 * 1024);
    assert!(Tensor::zeros(&g, &[512 * 1024]).is_err());
    g.set_memory_limit(None);
    assert_eq!(g.memory_limit(), None);
    let e = Tensor::zeros(&g, &[512 * 1024]).unwrap();
    assert_eq!(c.numel() + e.numel(), (160 + 512) * 1024);
}

#[test]
fn memory_limits_parse_with_units_and_name_the_variable_when_wrong() {
    use equimodal::gpu::parse_bytes;
    assert_eq!(parse_bytes("x", "4096").unwrap(), 4096);
    assert_eq!(parse_bytes("x", "512MiB").unwrap(), 512 << 20);
    assert_eq!(parse_bytes("x", "2 GiB").unwrap(), 2 << 30);
    assert_eq!(parse_bytes("x", "3k").unwrap(), 3072);
    let e = parse_bytes("EQUIMODAL_MEMORY_LIMIT", "12 parsecs").unwrap_err().to_string();
    assert!(e.contains("EQUIMODAL_MEMORY_LIMIT") && e.contains("parsecs"), "{e}");
    assert!(parse_bytes("x", "").is_err());
    assert!(parse_bytes("x", "99999999999999999999GiB").is_err());
}

fn plain() -> Gpu {
    let mut o = common::test_options();
    o.pool_canary = false; // exact block sizes: the canary adds slack to every block
    Gpu::new(o).unwrap()
}

#[test]
fn freed_neighbours_merge_and_serve_a_larger_tensor_without_a_new_segment() {
    let g = plain();
    let t = |n: usize| Tensor::zeros(&g, &[n]).unwrap();
    let (a, b, c) = (t(1000), t(2000), t(500)); // 4000, 8000, 2000 bytes, back to back
    assert_eq!([a.buffer().offset(), b.buffer().offset(), c.buffer().offset()], [0, 4000, 12000]);
    let before = g.memory();
    drop((a, b));
    // 12,000 bytes fit only in a and b merged: same segment, offset 0, nothing new reserved
    let d = t(3000);
    assert!(d.buffer().same_buffer(c.buffer()));
    assert_eq!(d.buffer().offset(), 0);
    let after = g.memory();
    assert_eq!((after.reserved, after.segments, after.allocations), (before.reserved, before.segments, before.allocations));
    // and c's neighbour on the right is the rest of the segment: freeing everything leaves one
    // free block of the whole segment, which trim returns
    drop((c, d));
    assert_eq!(g.memory_cached_by_size(), vec![(SMALL_SEGMENT_MIN, 1)]);
    g.trim_memory();
    assert_eq!(g.memory().reserved, 0);
}

#[test]
fn large_tensors_get_exact_segments_that_smaller_large_tensors_split() {
    let g = plain();
    let mib = 1usize << 20;
    let big = Tensor::zeros(&g, &[3 * mib / 4]).unwrap(); // 3 MiB: a segment of its own
    let m = g.memory();
    assert_eq!((m.reserved, m.segments), (3 << 20, 1));
    drop(big);
    // two 1.5 MiB tensors split the free 3 MiB segment: nothing new reserved
    let x = Tensor::zeros(&g, &[3 * mib / 8]).unwrap();
    let y = Tensor::zeros(&g, &[3 * mib / 8]).unwrap();
    assert!(x.buffer().same_buffer(y.buffer()));
    let m = g.memory();
    assert_eq!((m.reserved, m.segments, m.allocations), (3 << 20, 1, 1));
    // a small tensor does not take large-pool memory (a free large range stays whole)
    drop(y);
    let s = Tensor::zeros(&g, &[10]).unwrap();
    assert!(!s.buffer().same_buffer(x.buffer()));
    // trim keeps segments with a live block
    g.trim_memory();
    assert_eq!(g.memory().reserved, (3 << 20) + SMALL_SEGMENT_MIN);
    drop((x, s));
    g.trim_memory();
    assert_eq!(g.memory().reserved, 0);
}

#[test]
fn copies_between_tensors_of_one_segment_are_exact() {
    // WebGPU has no buffer-to-buffer copy within one buffer: Gpu::copy launches a kernel then
    let g = plain();
    let a = Tensor::from_slice(&g, &(0..300).map(|i| i as f32).collect::<Vec<_>>(), &[300]).unwrap();
    let b = Tensor::zeros(&g, &[300]).unwrap();
    assert!(a.buffer().same_buffer(b.buffer()));
    g.copy(a.buffer(), 40, b.buffer(), 8, 1000).unwrap();
    let got = b.to_vec().unwrap();
    let want: Vec<f32> = (0..300).map(|i| if (2..252).contains(&i) { (i + 8) as f32 } else { 0.0 }).collect();
    assert_eq!(got, want);
    // out of range or misaligned: an error, not a driver fault
    assert!(g.copy(a.buffer(), 0, b.buffer(), 4, 1200).is_err());
    assert!(g.copy(a.buffer(), 2, b.buffer(), 0, 8).is_err());
    // whole-tensor copies (clone) within one segment too
    let c = a.deep_copy().unwrap();
    assert_eq!(c.to_vec().unwrap(), a.to_vec().unwrap());
}
