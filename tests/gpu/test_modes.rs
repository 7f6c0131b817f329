//! The test modes themselves (docs/design.md, "Tests as the proof of correctness"): the
//! workgroup cap folds and splits every grid within the cap and over every item, and the
//! pool canary reports a write past the end of a tensor and nothing else.
use crate::common;
use common::*;
use equimodal::{ops, Tensor};

#[test]
fn folded_grids_cover_every_item_within_the_cap() {
    for cap in [1u32, 2, 3, 5, 7] {
        with_workgroup_cap(cap, || {
            let g = gpu();
            let c = cap as usize;
            for per in [1usize, 64, 256] {
                // every size up to the largest a capped grid can hold (cap^3 workgroups)
                for groups in 1..=c * c * c {
                    for n in [(groups - 1) * per + 1, groups * per] {
                        let [x, y, z] = ops::grid(&g, n, per);
                        assert!(x <= cap && y <= cap && z <= cap, "cap {cap}: grid {:?} for {n} items", [x, y, z]);
                        let launched = (x * y * z) as usize;
                        assert!(launched * per >= n, "cap {cap}: grid {:?} misses items of {n}", [x, y, z]);
                        // spares: under gy per z slice (x * y >= per_z > x * (y - 1)), plus
                        // under one slice (gz * per_z >= groups > (gz - 1) * per_z)
                        assert!(launched < groups + (z * y) as usize + (x * y) as usize, "cap {cap}: grid {:?} for {groups} groups", [x, y, z]);
                    }
                }
            }
            // split launches tile the 3-D grid exactly once
            for groups in [[1usize, 1, 1], [7, 2, 5], [c + 1, 2 * c + 1, 3], [1, 1, 4 * c]] {
                let mut seen = std::collections::HashSet::new();
                for (first, size) in ops::split_grid(&g, groups) {
                    assert!(size.iter().all(|&s| s >= 1 && s <= cap), "cap {cap}: launch {size:?}");
                    for z in 0..size[2] {
                        for y in 0..size[1] {
                            for x in 0..size[0] {
                                let id = (first[0] + x, first[1] + y, first[2] + z);
                                assert!((id.0 as usize) < groups[0] && (id.1 as usize) < groups[1] && (id.2 as usize) < groups[2]);
                                assert!(seen.insert(id), "cap {cap}: workgroup {id:?} launched twice");
                            }
                        }
                    }
                }
                assert_eq!(seen.len(), groups.iter().product::<usize>(), "cap {cap}: split of {groups:?}");
            }
        });
    }
}

#[test]
fn a_launch_beyond_the_cap_fails_loudly() {
    with_workgroup_cap(2, || {
        // 2^3 workgroups of 256 at most: 2,049 elements need 9
        let x = Tensor::zeros(&gpu(), &[2049]).unwrap();
        let err = ops::relu(&x).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("exceeds 2 workgroups per dimension"), "{err}");
        let x = Tensor::zeros(&gpu(), &[2048]).unwrap();
        assert!(ops::relu(&x).is_ok());
    });
}

#[test]
fn the_canary_reports_a_write_past_the_end_and_nothing_else() {
    // its own context: other tests of this binary must not see the deliberate violation
    let mut o = test_options();
    o.pool_canary = true;
    let g = equimodal::Gpu::new(o).unwrap();
    let x = Tensor::from_slice(&g, &[1.0; 100], &[100]).unwrap();
    let y = ops::relu(&x).unwrap();
    g.check_canaries().expect("clean ops leave every slack alone");
    // one word just past the end of y (byte 400), as a kernel without its `i < n` guard would
    g.upload(y.buffer(), y.byte_len(), &7.0f32.to_le_bytes()).unwrap();
    let err = g.check_canaries().unwrap_err().to_string();
    assert!(err.contains("word 100 (byte 400; the tensor ends at byte 400)"), "{err}");
    // a freed block is checked too: the changed word is reported after y is gone
    drop(y);
    let err = g.check_canaries().unwrap_err().to_string();
    assert!(err.contains("word 100"), "{err}");
    g.check_canaries().expect("a freed block is checked once, then belongs to no one");
    // a block freed with a changed slack and its memory handed out again: the old slack is
    // checked before the new owner's sentinel is written
    let y = ops::relu(&x).unwrap();
    g.upload(y.buffer(), y.byte_len(), &7.0f32.to_le_bytes()).unwrap();
    drop(y);
    let z = ops::relu(&x).unwrap();
    let err = g.check_canaries().unwrap_err().to_string();
    assert!(err.contains("word 100"), "{err}");
    g.check_canaries().expect("refilled on reuse");
    // a copy of another buffer's slack (its sentinel) is seen too: sentinels differ per allocation
    let other = Tensor::from_slice(&g, &[2.0; 100], &[100]).unwrap();
    g.copy(other.buffer(), other.byte_len(), z.buffer(), z.byte_len(), 4).unwrap();
    assert!(g.check_canaries().is_err(), "a foreign sentinel went unseen");
}

/// Profiling mode (`GpuOptions::profile`, `EQUIMODAL_PROFILE`): each launch is timed with GPU
/// timestamps and added to its kernel's total, `shader::entry` as the key; the results are
/// those of the same ops unprofiled; a context without it reports nothing.
#[test]
fn the_profile_counts_every_launch_by_kernel_and_keeps_the_results() {
    let run = |profile: bool| {
        let mut o = test_options();
        o.profile = profile;
        o.tune = equimodal::TuneMode::Off;
        let g = equimodal::Gpu::new(o).unwrap();
        let mut rng = Rng::new(9);
        let a = upload(&g, &rng.normals(300 * 200), &[300, 200]);
        let b = upload(&g, &rng.normals(200 * 100), &[200, 100]);
        let c = equimodal::ops::matmul(&a, &b).unwrap();
        let mut d = c.clone();
        for _ in 0..3 {
            d = equimodal::ops::add(&d, &c).unwrap();
        }
        let s = equimodal::ops::sum_all(&d).unwrap();
        let out = (d.to_vec().unwrap(), s.to_vec().unwrap());
        (out, g.profile_report(), g.capabilities().timestamps)
    };
    let (plain, none, _) = run(false);
    assert!(none.is_empty(), "no profile without the option: {none:?}");
    let (profiled, report, timestamps) = run(true);
    if !timestamps {
        eprintln!("skipped: this adapter has no timestamp queries, so profiling is off");
        return;
    }
    assert_eq!(profiled, plain, "profiling changed a result");
    let launches = |part: &str| report.iter().filter(|r| r.0.contains(part)).map(|r| r.1).sum::<u64>();
    assert!(launches("matmul::") >= 1, "{report:?}");
    assert_eq!(launches("elementwise::binary"), 3, "three adds: {report:?}");
    assert!(launches("reduce::") >= 1, "{report:?}");
    assert!(report.iter().all(|r| r.0.contains("::") && r.2.is_finite() && r.2 >= 0.0), "{report:?}");
    assert!(report.windows(2).all(|w| w[0].2 >= w[1].2), "most expensive first: {report:?}");
}
