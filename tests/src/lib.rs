//! Integration and end-to-end tests of the vexfs harness live in `tests/`.
