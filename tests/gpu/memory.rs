//! Running out of memory is an error, not a crash: a buffer beyond the memory limit (a
//! stand-in for a full device) first releases the pool's cache, then fails with
//! `Error::OutOfMemory` naming the request, and the context stays usable.
use crate::common;
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
