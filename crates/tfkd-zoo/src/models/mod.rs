//! Model families, one file each. Every file cites the paper and the reference
//! PyTorch file it reproduces; its `Config` has named constructors for the
//! paper's variants and can describe reduced-width instances for tests.

pub mod alexnet;
pub mod cnn;
pub mod densenet;
pub mod googlenet;
pub mod mobilenet_v2;
pub mod resnet;
pub mod resnext;
pub mod shufflenet_v2;
pub mod tv_densenet;
pub mod tv_resnet;
pub mod vgg;
pub mod wrn;
