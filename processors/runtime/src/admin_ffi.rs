//! librdkafka admin calls that rdkafka 0.39 does not wrap (ACLs,
//! DescribeTopics with authorized operations, IncrementalAlterConfigs),
//! made through its bindings: one request on a queue of its own, blocking
//! until the broker answers.

use rdkafka::bindings as rd;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

/// One admin request of `op` on a queue of its own, waited for up to
/// `timeout`; `read` turns the event into the answer.
///
/// # Safety
/// `rk` must be a live client; `request` must enqueue exactly one request
/// of `op` on the queue it is given; `read` may use the event only until it
/// returns.
pub(crate) unsafe fn admin_call<T>(
    rk: *mut rd::rd_kafka_t,
    timeout: Duration,
    op: rd::rd_kafka_admin_op_t,
    request: impl FnOnce(
        *mut rd::rd_kafka_t,
        *const rd::rd_kafka_AdminOptions_t,
        *mut rd::rd_kafka_queue_t,
    ),
    read: impl FnOnce(*mut rd::rd_kafka_event_t) -> Result<T, String>,
) -> Result<T, String> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the options and queue are created and destroyed here, the
    // event after `read` has finished with it.
    unsafe {
        let options = rd::rd_kafka_AdminOptions_new(rk, op);
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if op == rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS {
            let error = rd::rd_kafka_AdminOptions_set_include_authorized_operations(options, 1);
            if !error.is_null() {
                rd::rd_kafka_error_destroy(error);
            }
        }
        let queue = rd::rd_kafka_queue_new(rk);
        request(rk, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1000));
        let outcome = if event.is_null() {
            Err("no answer from the broker in time".to_string())
        } else if rd::rd_kafka_event_error(event)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            Err(text(rd::rd_kafka_event_error_string(event)))
        } else {
            read(event)
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        outcome
    }
}

pub(crate) fn c_text(value: &str) -> Result<CString, String> {
    CString::new(value).map_err(|_| format!("NUL byte in {value:?}"))
}

pub(crate) fn text(pointer: *const c_char) -> String {
    if pointer.is_null() {
        String::new()
    } else {
        // SAFETY: librdkafka returns NUL-terminated strings that live as
        // long as the object they belong to, which outlives this call.
        unsafe { CStr::from_ptr(pointer) }
            .to_string_lossy()
            .into_owned()
    }
}
