//! Acceptor credentials from a given keytab file: the one FFI call of the Negotiate acceptor.
//!
//! Why unsafe code here: `libgssapi` wraps `gss_acquire_cred`, which reads the process's default
//! keytab (`KRB5_KTNAME`, or `default_keytab_name` in krb5.conf), but not MIT's
//! `gss_acquire_cred_from`, which takes the keytab as a credential-store element. The other ways
//! to name a keytab are process-global (`KRB5_KTNAME`, whose `std::env::set_var` is itself unsafe
//! in edition 2024, or `krb5_gss_register_acceptor_identity`) and would let two test Exchanges in
//! one test binary read each other's keytab. So this module calls `gss_acquire_cred_from`
//! through `libgssapi-sys` and hands the result to `libgssapi`'s safe `Cred`, which releases it.
//! Everything else the acceptor does goes through `libgssapi`'s safe API.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::path::Path;
use std::ptr;

use libgssapi::credential::Cred;
use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi_sys::{
    _GSS_C_INDEFINITE, GSS_C_ACCEPT, OM_uint32, gss_OID_desc, gss_OID_set, gss_OID_set_desc,
    gss_acquire_cred_from, gss_cred_id_t, gss_cred_usage_t, gss_key_value_element_desc,
    gss_key_value_set_desc,
};

/// The DER body of the SPNEGO mechanism OID 1.3.6.1.5.5.2 (RFC 4178).
const SPNEGO_OID: [u8; 6] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];

/// Acceptor credentials for SPNEGO (and through it Kerberos) for every principal in `keytab`
/// (`GSS_C_NO_NAME`), with the keytab named by the `keytab` credential-store element.
///
/// MIT checks here that the keytab can be opened and holds at least one key; which key decrypts
/// a ticket is decided per ticket when a context is accepted.
pub(crate) fn acceptor_from_keytab(keytab: &Path) -> Result<Cred, GssError> {
    // A path with a NUL byte cannot name a file; report it as a bad name, as libgssapi does for
    // strings it cannot pass to C.
    let bad_name = GssError {
        major: MajorFlags::GSS_S_BAD_NAME,
        minor: 0,
    };
    let keytab = keytab.to_str().ok_or(bad_name)?;
    let keytab = CString::new(format!("FILE:{keytab}")).map_err(|_| bad_name)?;
    let mut element = gss_key_value_element_desc {
        key: c"keytab".as_ptr(),
        value: keytab.as_ptr(),
    };
    let store = gss_key_value_set_desc {
        count: 1,
        elements: &mut element,
    };
    let mut spnego = gss_OID_desc {
        length: SPNEGO_OID.len() as OM_uint32,
        elements: SPNEGO_OID.as_ptr() as *mut c_void,
    };
    let mut mechs = gss_OID_set_desc {
        count: 1,
        elements: &mut spnego,
    };
    let mut minor: OM_uint32 = 0;
    let mut cred: gss_cred_id_t = ptr::null_mut();
    // SAFETY: every pointer passed points to a live local (`keytab`, `element`, `store`,
    // `spnego`, `mechs`, `minor`, `cred`) that outlives the call; GSSAPI only reads the inputs
    // (it copies the keytab name and the OIDs it keeps) and writes `minor` and `cred`. A null
    // name is GSS_C_NO_NAME; null actual_mechs and time_rec ask for nothing back.
    let major = unsafe {
        gss_acquire_cred_from(
            &mut minor,
            ptr::null_mut(),
            _GSS_C_INDEFINITE,
            &mut mechs as gss_OID_set,
            GSS_C_ACCEPT as gss_cred_usage_t,
            &store,
            &mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if major != 0 || cred.is_null() {
        return Err(GssError {
            major: MajorFlags::from_bits_retain(major),
            minor,
        });
    }
    // SAFETY: `cred` is a credential handle freshly returned by a successful
    // gss_acquire_cred_from, owned by nobody else; `Cred` takes ownership and releases it once.
    Ok(unsafe { Cred::from_c(cred) })
}
