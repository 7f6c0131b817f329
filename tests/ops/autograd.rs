//! The autograd graph: gradients accumulate across uses and intermediate storage is freed
//! as the backward walks; views keep their gradient.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::Tensor;

#[test]
fn autograd_accumulates_and_frees() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1.0, 2.0, 3.0], &[3]).unwrap().requires_grad();
    // y = sum(x*x + x) -> dy/dx = 2x + 1 ; x used twice in the graph
    let y = ops::sum_all(&ops::add(&ops::mul(&x, &x).unwrap(), &x).unwrap()).unwrap();
    let mut grads = equimodal::Gradients::new();
    y.backward_into(&mut grads).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![3.0, 5.0, 7.0]);
    // a second backward through the same graph is a typed error (saved tensors freed)
    assert!(y.backward_into(&mut grads).is_err());
    // a new graph accumulates into the same store
    let z = ops::sum_all(&ops::scale(&x, 2.0).unwrap()).unwrap();
    z.backward_into(&mut grads).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![5.0, 7.0, 9.0]);
    // no_grad records nothing
    let w = {
        let _ng = equimodal::autograd::no_grad();
        ops::mul(&x, &x).unwrap()
    };
    assert!(!w.is_tracked());
    assert!(ops::sum_all(&w).unwrap().backward().is_err());
    // only leaves keep gradients
    assert_eq!(grads.len(), 1);
}

#[test]
fn reshape_is_a_view_with_gradient() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1., 2., 3., 4., 5., 6.], &[2, 3]).unwrap().requires_grad();
    let r = x.reshape(&[3, usize::MAX]).unwrap();
    assert_eq!(r.shape(), &[3, 2]);
    assert!(std::sync::Arc::ptr_eq(r.storage(), x.storage()));
    let w = Tensor::from_slice(&g, &[1., 0., 0., 0., 0., 2.], &[3, 2]).unwrap();
    let l = ops::sum_all(&ops::mul(&r, &w).unwrap()).unwrap();
    let gr = l.backward().unwrap();
    assert_eq!(gr.get(&x).unwrap().to_vec().unwrap(), vec![1., 0., 0., 0., 0., 2.]);
    assert!(x.reshape(&[4, 2]).is_err());
}

/// A gradient sum nothing else holds is accumulated in its own buffer (no new allocation);
/// one that a caller still holds is left untouched and the sum goes to a new tensor.
#[test]
fn gradients_accumulate_in_place_only_when_unshared() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1.0, -2.0, 3.0, 0.5], &[4]).unwrap().requires_grad();
    let mut grads = equimodal::Gradients::new();
    ops::sum_all(&ops::scale(&x, 2.0).unwrap()).unwrap().backward_into(&mut grads).unwrap();
    let first = std::sync::Arc::as_ptr(grads.get(&x).unwrap().storage()) as usize;
    ops::sum_all(&ops::mul(&x, &x).unwrap()).unwrap().backward_into(&mut grads).unwrap();
    let sum = grads.get(&x).unwrap();
    assert_eq!(sum.to_vec().unwrap(), vec![4.0, -2.0, 8.0, 3.0]); // 2 + 2x
    assert_eq!(std::sync::Arc::as_ptr(sum.storage()) as usize, first, "the unshared sum kept its buffer");
    // held by the caller: the sum must not change under them
    let held = grads.get(&x).unwrap().clone();
    ops::sum_all(&x).unwrap().backward_into(&mut grads).unwrap();
    assert_eq!(held.to_vec().unwrap(), vec![4.0, -2.0, 8.0, 3.0]);
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![5.0, -1.0, 9.0, 4.0]);
    assert!(!std::sync::Arc::ptr_eq(grads.get(&x).unwrap().storage(), held.storage()));
    // a broadcast-shaped or non-f32 operand falls back to the out-of-place add
    let acc = Tensor::from_slice(&g, &[1.0, 2.0], &[2]).unwrap();
    let row = Tensor::from_slice(&g, &[10.0, 20.0], &[1, 2]).unwrap();
    assert_eq!(ops::add_into(acc, &row).unwrap().to_vec().unwrap(), vec![11.0, 22.0]);
    assert_canaries("add_into");
}

/// A backward seed that cannot be the output's gradient is refused with a typed error, not a
/// GPU validation panic: another shape, or a tensor of another GPU context.
#[test]
fn a_foreign_or_misshapen_backward_seed_is_refused() {
    let g = gpu();
    let x = upload(&g, &[1.0, -2.0, 3.0], &[3]).requires_grad();
    let y = ops::relu(&x).unwrap();
    let mut grads = equimodal::Gradients::new();
    let e = y.backward_with(upload(&g, &[1.0, 1.0], &[2]), &mut grads).unwrap_err();
    assert!(matches!(e, equimodal::Error::Autograd(_)) && e.to_string().contains("shape"), "{e}");
    let other = equimodal::Gpu::new(test_options()).unwrap();
    let e = y.backward_with(upload(&other, &[1.0, 1.0, 1.0], &[3]), &mut grads).unwrap_err();
    assert!(matches!(e, equimodal::Error::Autograd(_)) && e.to_string().contains("another GPU context"), "{e}");
    assert!(grads.is_empty());
}
