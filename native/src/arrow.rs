//! Columns handed to Python through the Arrow C data interface (the `__arrow_c_array__` protocol).
//!
//! Polars imports such an array without a Python object per value.  Only the
//! types the decoder needs: Float64, Int64, Int8, UInt32, Boolean and
//! LargeUtf8, each with an optional validity bitmap.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;

#[repr(C)]
pub struct FfiSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut FfiSchema,
    dictionary: *mut FfiSchema,
    release: Option<unsafe extern "C" fn(*mut FfiSchema)>,
    private_data: *mut c_void,
}

#[repr(C)]
pub struct FfiArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut FfiArray,
    dictionary: *mut FfiArray,
    release: Option<unsafe extern "C" fn(*mut FfiArray)>,
    private_data: *mut c_void,
}

const ARROW_FLAG_NULLABLE: i64 = 2;

/// One owned buffer, typed so that its pointer has the alignment of its values.
pub enum Buf {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Buf {
    fn ptr(&self) -> *const c_void {
        match self {
            Buf::U8(v) => v.as_ptr() as *const c_void,
            Buf::I8(v) => v.as_ptr() as *const c_void,
            Buf::U32(v) => v.as_ptr() as *const c_void,
            Buf::I64(v) => v.as_ptr() as *const c_void,
            Buf::F64(v) => v.as_ptr() as *const c_void,
        }
    }
}

/// Bits in Arrow's order (least significant first), for validity and Boolean values.
#[derive(Default)]
pub struct Bits {
    bytes: Vec<u8>,
    len: usize,
    unset: usize,
}

impl Bits {
    #[inline]
    pub fn push(&mut self, bit: bool) {
        if self.len % 8 == 0 {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().unwrap() |= 1 << (self.len % 8);
        } else {
            self.unset += 1;
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn unset(&self) -> usize {
        self.unset
    }

    pub fn into_buf(self) -> Buf {
        Buf::U8(self.bytes)
    }
}

/// A column ready for export: Arrow format string, length, validity, value buffers.
pub struct Column {
    pub format: &'static CStr,
    pub length: usize,
    pub validity: Option<Bits>,
    pub buffers: Vec<Buf>, // after the validity buffer
    pub dictionary: Option<Box<Column>>, // the values that `buffers` index (a dictionary array)
}

struct ArrayPrivate {
    _buffers: Vec<Buf>,
    pointers: Vec<*const c_void>,
    dictionary: *mut FfiArray,
}

struct SchemaPrivate {
    _name: CString,
    dictionary: *mut FfiSchema,
}

unsafe extern "C" fn release_array(array: *mut FfiArray) {
    if array.is_null() || (*array).release.is_none() {
        return;
    }
    let private = Box::from_raw((*array).private_data as *mut ArrayPrivate);
    if !private.dictionary.is_null() {
        release_array(private.dictionary);
        drop(Box::from_raw(private.dictionary));
    }
    (*array).release = None;
}

unsafe extern "C" fn release_schema(schema: *mut FfiSchema) {
    if schema.is_null() || (*schema).release.is_none() {
        return;
    }
    let private = Box::from_raw((*schema).private_data as *mut SchemaPrivate);
    if !private.dictionary.is_null() {
        release_schema(private.dictionary);
        drop(Box::from_raw(private.dictionary));
    }
    (*schema).release = None;
}

/// The C structs of a column (and of its dictionary), owning its buffers until released.
fn export(column: Column) -> (FfiSchema, FfiArray) {
    let nullable = column.validity.is_some();
    let null_count = column.validity.as_ref().map_or(0, |v| v.unset()) as i64;
    let mut buffers: Vec<Buf> = Vec::with_capacity(column.buffers.len() + 1);
    let mut pointers: Vec<*const c_void> = Vec::with_capacity(column.buffers.len() + 1);
    match column.validity {
        Some(bits) if bits.unset() > 0 => {
            let buf = bits.into_buf();
            pointers.push(buf.ptr());
            buffers.push(buf);
        }
        _ => pointers.push(ptr::null()),
    }
    for buf in column.buffers {
        pointers.push(buf.ptr());
        buffers.push(buf);
    }
    let (dict_schema, dict_array) = match column.dictionary {
        Some(values) => {
            let (s, a) = export(*values);
            (Box::into_raw(Box::new(s)), Box::into_raw(Box::new(a)))
        }
        None => (ptr::null_mut(), ptr::null_mut()),
    };
    let n_buffers = pointers.len() as i64;
    let mut private = Box::new(ArrayPrivate { _buffers: buffers, pointers, dictionary: dict_array });
    let buffer_ptr = private.pointers.as_mut_ptr();
    let array = FfiArray {
        length: column.length as i64,
        null_count,
        offset: 0,
        n_buffers,
        n_children: 0,
        buffers: buffer_ptr,
        children: ptr::null_mut(),
        dictionary: dict_array,
        release: Some(release_array),
        private_data: Box::into_raw(private) as *mut c_void,
    };
    let name = CString::new("").unwrap();
    let schema = FfiSchema {
        format: column.format.as_ptr(),
        name: name.as_ptr(),
        metadata: ptr::null(),
        flags: if nullable { ARROW_FLAG_NULLABLE } else { 0 },
        n_children: 0,
        children: ptr::null_mut(),
        dictionary: dict_schema,
        release: Some(release_schema),
        private_data: Box::into_raw(Box::new(SchemaPrivate { _name: name, dictionary: dict_schema }))
            as *mut c_void,
    };
    (schema, array)
}

const SCHEMA_NAME: &CStr = c"arrow_schema";
const ARRAY_NAME: &CStr = c"arrow_array";

unsafe extern "C" fn drop_schema_capsule(capsule: *mut ffi::PyObject) {
    let schema = ffi::PyCapsule_GetPointer(capsule, SCHEMA_NAME.as_ptr()) as *mut FfiSchema;
    if schema.is_null() {
        ffi::PyErr_Clear();
        return;
    }
    release_schema(schema); // a no-op when the consumer moved it out
    drop(Box::from_raw(schema));
}

unsafe extern "C" fn drop_array_capsule(capsule: *mut ffi::PyObject) {
    let array = ffi::PyCapsule_GetPointer(capsule, ARRAY_NAME.as_ptr()) as *mut FfiArray;
    if array.is_null() {
        ffi::PyErr_Clear();
        return;
    }
    release_array(array);
    drop(Box::from_raw(array));
}

/// A column Python reads once through `__arrow_c_array__` (e.g. `polars.Series(column)`).
#[pyclass(module = "canary_gate_native")]
pub struct ArrowColumn {
    column: Option<Column>,
}

impl ArrowColumn {
    pub fn new(column: Column) -> Self {
        ArrowColumn { column: Some(column) }
    }
}

#[pymethods]
impl ArrowColumn {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        if requested_schema.as_ref().is_some_and(|s| !s.is_none()) {
            return Err(PyRuntimeError::new_err("canary_gate_native columns are exported in their own type only"));
        }
        let column = self
            .column
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this column was exported already"))?;
        let (schema, array) = export(column);
        let (schema, array) = (Box::new(schema), Box::new(array));
        unsafe {
            let schema_raw = Box::into_raw(schema);
            let schema_capsule =
                ffi::PyCapsule_New(schema_raw as *mut c_void, SCHEMA_NAME.as_ptr(), Some(drop_schema_capsule));
            if schema_capsule.is_null() {
                release_schema(schema_raw);
                drop(Box::from_raw(schema_raw));
                release_array(Box::into_raw(array));
                return Err(PyErr::fetch(py));
            }
            let schema_obj = Bound::from_owned_ptr(py, schema_capsule);
            let array_raw = Box::into_raw(array);
            let array_capsule =
                ffi::PyCapsule_New(array_raw as *mut c_void, ARRAY_NAME.as_ptr(), Some(drop_array_capsule));
            if array_capsule.is_null() {
                release_array(array_raw);
                drop(Box::from_raw(array_raw));
                return Err(PyErr::fetch(py));
            }
            let array_obj = Bound::from_owned_ptr(py, array_capsule);
            Ok((schema_obj, array_obj))
        }
    }
}
