//! The library target exists so that `bench` can name this crate as a build dependency (cargo
//! then rebuilds the object when it changes); the programs are the binary.
#![no_std]
