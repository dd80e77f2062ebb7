//! Pure parsers of `/proc` files. No I/O beyond the `read_*` helpers; every
//! parser takes the file's text so it can be unit-tested without root.
