//! concat, split, narrow, permute, transpose and index_select0 against CPU references and
//! finite differences.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::{Error, Tensor};

/// Views `shape` as [outer, shape[axis], inner].
fn oti(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

fn concat_ref(parts: &[(&[f64], &[usize])], axis: usize) -> Vec<f64> {
    let (outer, _, inner) = oti(parts[0].1, axis);
    let mut out = Vec::new();
    for o in 0..outer {
        for (d, s) in parts {
            let len = s[axis] * inner;
            out.extend_from_slice(&d[o * len..(o + 1) * len]);
        }
    }
    out
}

fn narrow_ref(x: &[f64], shape: &[usize], axis: usize, start: usize, len: usize) -> Vec<f64> {
    let (outer, total, inner) = oti(shape, axis);
    let mut out = Vec::new();
    for o in 0..outer {
        out.extend_from_slice(&x[(o * total + start) * inner..(o * total + start + len) * inner]);
    }
    out
}

fn permute_ref(x: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
    let nd = shape.len();
    let mut strides = vec![1; nd];
    for d in (0..nd.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    (0..x.len())
        .map(|i| {
            let mut rem = i;
            let mut src = 0;
            for j in (0..nd).rev() {
                src += (rem % out_shape[j]) * strides[perm[j]];
                rem /= out_shape[j];
            }
            x[src]
        })
        .collect()
}

/// Data movement is exact; gradients are copies of the seed or sums of a few (repeated ids).
const TOL: Tol = Tol { rtol: 0.0, atol: 0.0, grad_rtol: 1e-5, grad_atol: 1e-6 };

#[test]
fn concat_three_tensors_along_each_axis() {
    let mut rng = Rng::new(3);
    // (shapes, axis as passed, normalised axis)
    let cases: Vec<(Vec<Vec<usize>>, isize, usize)> = vec![
        (vec![vec![1, 3, 5], vec![2, 3, 5], vec![3, 3, 5]], 0, 0),
        (vec![vec![2, 3, 5], vec![2, 4, 5], vec![2, 1, 5]], 1, 1),
        (vec![vec![2, 3, 1], vec![2, 3, 4], vec![2, 3, 2]], -1, 2),
        // inner 4 and aligned offsets: the vec4 copy kernel
        (vec![vec![3, 2, 4], vec![3, 6, 4], vec![3, 1, 4]], 1, 1),
        (vec![vec![4], vec![1], vec![7]], 0, 0),
    ];
    for (shapes, axis, ax) in cases {
        let inputs: Vec<(Vec<f64>, Vec<usize>)> = shapes.iter().map(|s| (rng.normals(numel(s)), s.clone())).collect();
        let shapes2 = shapes.clone();
        check_op(
            &format!("concat {shapes:?} axis {axis}"),
            &inputs,
            &[0, 1, 2],
            &|t| ops::concat(&[&t[0], &t[1], &t[2]], axis),
            &|xs| {
                let parts: Vec<(&[f64], &[usize])> = xs.iter().zip(&shapes2).map(|(d, s)| (d.as_slice(), s.as_slice())).collect();
                concat_ref(&parts, ax)
            },
            TOL,
        );
    }
}

#[test]
fn split_pieces_and_their_gradients() {
    let mut rng = Rng::new(5);
    let cases: Vec<(Vec<usize>, Vec<usize>, isize, usize)> = vec![
        (vec![6, 3], vec![1, 3, 2], 0, 0),
        (vec![2, 7, 3], vec![2, 0, 5], 1, 1),
        (vec![3, 2, 9], vec![4, 4, 1], -1, 2),
        (vec![2, 12, 4], vec![4, 8], 1, 1),
    ];
    for (shape, sizes, axis, ax) in cases {
        let x = rng.normals(numel(&shape));
        let mut start = 0;
        for (i, &len) in sizes.iter().enumerate() {
            let sizes2 = sizes.clone();
            let shape2 = shape.clone();
            check_op(
                &format!("split {shape:?} {sizes:?} piece {i}"),
                &[(x.clone(), shape.clone())],
                &[0],
                &|t| Ok(ops::split(&t[0], &sizes2, axis)?.swap_remove(i)),
                &|xs| narrow_ref(&xs[0], &shape2, ax, start, len),
                TOL,
            );
            start += len;
        }
        // all pieces used at once, re-joined in reverse order: gradients from several
        // pieces add up in the input
        let sizes2 = sizes.clone();
        let shape2 = shape.clone();
        check_op(
            &format!("split-rejoin {shape:?} {sizes:?}"),
            &[(x.clone(), shape.clone())],
            &[0],
            &|t| {
                let ps = ops::split(&t[0], &sizes2, axis)?;
                let rev: Vec<&Tensor> = ps.iter().rev().collect();
                ops::concat(&rev, axis)
            },
            &|xs| {
                let mut starts = vec![0];
                for s in &sizes2 {
                    starts.push(starts.last().unwrap() + s);
                }
                let pieces: Vec<(Vec<f64>, Vec<usize>)> = sizes2
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, &len)| {
                        let mut s = shape2.clone();
                        s[ax] = len;
                        (narrow_ref(&xs[0], &shape2, ax, starts[i], len), s)
                    })
                    .collect();
                let parts: Vec<(&[f64], &[usize])> = pieces.iter().map(|(d, s)| (d.as_slice(), s.as_slice())).collect();
                concat_ref(&parts, ax)
            },
            TOL,
        );
    }
}

#[test]
fn narrow_along_each_axis() {
    let mut rng = Rng::new(9);
    let shape = vec![3, 5, 6];
    let x = rng.normals(numel(&shape));
    for (axis, ax, start, len) in [(0isize, 0usize, 1usize, 2usize), (1, 1, 2, 3), (-1, 2, 1, 4), (2, 2, 0, 6), (1, 1, 4, 1), (0, 0, 0, 3)] {
        let shape2 = shape.clone();
        check_op(
            &format!("narrow axis {axis} {start}+{len}"),
            &[(x.clone(), shape.clone())],
            &[0],
            &|t| ops::narrow(&t[0], axis, start, len),
            &|xs| narrow_ref(&xs[0], &shape2, ax, start, len),
            TOL,
        );
    }
}

#[test]
fn permute_and_transpose_3d_4d() {
    let mut rng = Rng::new(21);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4], vec![0, 2, 1]),     // batched transpose (tiled kernel)
        (vec![2, 3, 4], vec![2, 0, 1]),     // general
        (vec![2, 3, 4], vec![1, 0, 2]),     // general with a contiguous inner run
        (vec![2, 3, 4], vec![0, 1, 2]),     // identity: a copy
        (vec![37, 45], vec![1, 0]),         // 2-D transpose, not a multiple of the 32 tile
        (vec![3, 33, 40], vec![0, 2, 1]),   // tiles straddling the edges
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
        (vec![2, 3, 4, 5], vec![3, 1, 2, 0]),
        (vec![2, 3, 4, 5], vec![0, 1, 3, 2]), // collapses to a batched transpose
        (vec![2, 1, 4, 1], vec![3, 2, 1, 0]), // size-1 dims dropped
        (vec![3, 2, 1, 2, 2], vec![4, 0, 3, 2, 1]),
    ];
    for (shape, perm) in cases {
        let x = rng.normals(numel(&shape));
        let (shape2, perm2) = (shape.clone(), perm.clone());
        check_op(
            &format!("permute {shape:?} {perm:?}"),
            &[(x, shape.clone())],
            &[0],
            &|t| ops::permute(&t[0], &perm2),
            &|xs| permute_ref(&xs[0], &shape2, &perm2),
            TOL,
        );
    }
    for (shape, d0, d1, perm) in [
        (vec![3, 4], 0isize, 1isize, vec![1, 0]),
        (vec![2, 3, 5], -1, -2, vec![0, 2, 1]),
        (vec![2, 3, 5], 0, 2, vec![2, 1, 0]),
        (vec![2, 3, 4, 5], 1, 3, vec![0, 3, 2, 1]),
    ] {
        let x = rng.normals(numel(&shape));
        let (shape2, perm2) = (shape.clone(), perm.clone());
        check_op(
            &format!("transpose {shape:?} {d0} {d1}"),
            &[(x, shape.clone())],
            &[0],
            &|t| ops::transpose(&t[0], d0, d1),
            &|xs| permute_ref(&xs[0], &shape2, &perm2),
            TOL,
        );
    }
}

#[test]
fn index_select0_with_repeated_ids() {
    let g = gpu();
    let mut rng = Rng::new(33);
    for (shape, ids) in [
        (vec![5, 3], vec![4u32, 0, 4, 2, 4, 1]),
        (vec![6, 2, 3], vec![1u32, 1, 5]),
        (vec![4], vec![3u32, 3, 3, 0, 2, 2, 1]),
        (vec![300, 2], (0..700).map(|i| (i * 7 % 300) as u32).collect()),
    ] {
        let x = rng.normals(numel(&shape));
        let inner: usize = shape[1..].iter().product();
        let it = Tensor::from_u32(&g, &ids, &[ids.len()]).unwrap();
        let ids2 = ids.clone();
        check_op(
            &format!("index_select0 {shape:?} ids {}", ids.len()),
            &[(x, shape.clone())],
            &[0],
            &|t| ops::index_select0(&t[0], &it),
            &|xs| ids2.iter().flat_map(|&r| xs[0][r as usize * inner..(r as usize + 1) * inner].to_vec()).collect(),
            TOL,
        );
    }
    // an id past the end gives a NaN row, not an out-of-bounds read
    let x = Tensor::from_slice(&g, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let ids = Tensor::from_u32(&g, &[1, 9], &[2]).unwrap();
    let y = ops::index_select0(&x, &ids).unwrap().to_vec().unwrap();
    assert_eq!(&y[..2], &[3.0, 4.0]);
    assert!(y[2].is_nan() && y[3].is_nan());
}

#[test]
fn u32_tensors_move_bit_exactly() {
    let g = gpu();
    let a = Tensor::from_u32(&g, &[1, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    let b = Tensor::from_u32(&g, &[7, 8], &[2, 1]).unwrap();
    let c = ops::concat(&[&a, &b], 1).unwrap();
    assert_eq!(c.to_vec_u32().unwrap(), vec![1, 2, 3, 7, 4, 5, 6, 8]);
    assert_eq!(ops::narrow(&c, 1, 1, 2).unwrap().to_vec_u32().unwrap(), vec![2, 3, 5, 6]);
    assert_eq!(ops::transpose(&a, 0, 1).unwrap().to_vec_u32().unwrap(), vec![1, 4, 2, 5, 3, 6]);
    let ids = Tensor::from_u32(&g, &[1, 1, 0], &[3]).unwrap();
    assert_eq!(ops::index_select0(&a, &ids).unwrap().to_vec_u32().unwrap(), vec![4, 5, 6, 4, 5, 6, 1, 2, 3]);
}

#[test]
fn typed_errors_name_shapes_and_axes() {
    let g = gpu();
    let a = Tensor::zeros(&g, &[2, 3]).unwrap();
    let b = Tensor::zeros(&g, &[2, 4]).unwrap();
    let e = ops::concat(&[&a, &b], 0).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Shape { .. }) && msg.contains("[2, 3]") && msg.contains("[2, 4]"), "{msg}");
    assert!(ops::concat(&[&a, &b], 1).is_ok());
    let msg = ops::concat(&[&a, &b], 2).unwrap_err().to_string();
    assert!(msg.contains("axis 2") && msg.contains("[2, 3]"), "{msg}");
    assert!(ops::concat(&[], 0).is_err());
    let u = Tensor::from_u32(&g, &[1, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    assert!(ops::concat(&[&a, &u], 0).is_err());
    let msg = ops::narrow(&a, -3, 0, 1).unwrap_err().to_string();
    assert!(msg.contains("axis -3") && msg.contains("[2, 3]"), "{msg}");
    let msg = ops::narrow(&a, 1, 2, 2).unwrap_err().to_string();
    assert!(msg.contains("2..4") && msg.contains("[2, 3]"), "{msg}");
    let msg = ops::split(&a, &[1, 1], 1).unwrap_err().to_string();
    assert!(msg.contains("[1, 1]") && msg.contains("[2, 3]"), "{msg}");
    let msg = ops::permute(&a, &[0, 0]).unwrap_err().to_string();
    assert!(msg.contains("[0, 0]") && msg.contains("[2, 3]"), "{msg}");
    assert!(ops::permute(&a, &[1]).is_err());
    assert!(ops::transpose(&a, 0, 2).is_err());
    let fids = Tensor::zeros(&g, &[2]).unwrap();
    let msg = ops::index_select0(&a, &fids).unwrap_err().to_string();
    assert!(msg.contains("[2]") && msg.contains("[2, 3]"), "{msg}");
    let h = Tensor::from_slice_f16(&g, &[1.0, 2.0], &[2]).unwrap();
    assert!(matches!(ops::narrow(&h, 0, 0, 1), Err(Error::DType { .. })));
}

/// Shape ops with at most 3 workgroups per grid dimension (`with_workgroup_cap`): the
/// transpose falls back to the general permute kernel when its tile grid does not fit.
#[test]
fn shape_ops_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        concat_three_tensors_along_each_axis();
        split_pieces_and_their_gradients();
        narrow_along_each_axis();
        permute_and_transpose_3d_4d();
        index_select0_with_repeated_ids();
    });
}
