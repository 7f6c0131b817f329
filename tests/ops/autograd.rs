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
