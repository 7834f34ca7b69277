pub mod cli;
pub mod fsops;
pub mod installer;
pub mod journal;
pub mod plan;
pub mod source;
pub mod txn;
