//! Cryptography with no notion of tickets or grants: the MACs that sign and
//! verify webhooks, ours and the sources' (`signature`), the asymmetric keys
//! that sign credentials (`keys`), the signed checkpoints of the audit chain
//! (`checkpoint`), and secrets sealed for the database under the `[keys]`
//! key-encryption key (`sealed`). Intake, the `http` provider and the
//! `token` provider all take their primitives from here, so each rule
//! (constant-time comparison, header formats, key parsing) exists once.

pub mod checkpoint;
pub mod keys;
pub mod sealed;
pub mod signature;
