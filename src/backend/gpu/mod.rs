//! placeholder
use super::{Backend, BackendError, BackendInfo, GpuError, Resident};
use ndarray::{ArrayView1, ArrayView2};
pub enum AdapterPolicy { Any, HardwareOnly }
pub struct GpuBackend;
impl GpuBackend { pub fn new(_p: AdapterPolicy) -> Result<Self, GpuError> { Err(GpuError::NoAdapter) } }
impl Backend for GpuBackend {
    fn info(&self) -> BackendInfo { todo!() }
    fn upload<'a>(&'a self, _x: ArrayView2<'a, f32>, _w: Option<ArrayView1<'a, f32>>) -> Result<Box<dyn Resident + 'a>, BackendError> { todo!() }
}
