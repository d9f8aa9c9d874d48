//! A RocketMQ-style message store. All I/O, time and task spawning go through the seams in
//! [`io`]; the engine knows nothing of simulation and runs unchanged on a real disk.

pub mod io;
