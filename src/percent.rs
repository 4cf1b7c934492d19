//! Percent-encoding of one URL component. Shared by the code that builds connection URLs
//! (`config`) and the redactor (`secret`), which must recognise a password in its encoded
//! form too; living here, neither of the two depends on the other.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 "unreserved" characters is encoded, so any password, user or
/// database name survives libpq's URI parser unchanged.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}
