//! The cluster's decisions as pure state machines: inputs are link events
//! (from any transport), membership messages, operator commands and timer
//! ticks; outputs are messages to send and decisions (views to install,
//! epochs to persist). Nothing here does I/O or reads a clock, so every
//! rule is unit-tested and model-tested without namespaces.
//!
//! - [`wire`]: membership messages, MAC, replay guard.
//! - [`quorum`]: votequorum semantics and tie-breakers.
//! - [`membership`]: membership, coordinator election and epochs.
//! - [`qserver`]: the quorum server's logic and its client side.
//! - [`placement`]: which node owns each package in an agreed view.
//! - [`lease`]: package leases; when a new owner may start a package.
//! - [`serial`]: the serial heartbeat line's frames (COBS, CRC, MAC).
//! - [`survivor`]: which node carries on when only the serial line is up.
//!
//! # Runner contract (what the daemon's cluster task does)
//!
//! 1. At start: read the persisted epoch and the start counter from the
//!    state file, raise and persist the counter (the *incarnation*), then
//!    build [`membership::Membership::new`], a [`wire::Sealer`] and a
//!    [`qserver::Client`] with that incarnation.
//! 2. Feed the current state first: `LinkUp` for every link that is up,
//!    `PeerAgent` for every peer whose heartbeats show a state other than
//!    running; then `Tick`. The machine sends nothing before its first tick.
//! 3. Link events from any transport → `LinkUp`/`LinkDown`. Peer agent
//!    states seen in heartbeats → `PeerAgent`, on every change and again
//!    whenever a link to the peer comes up.
//! 4. A datagram of kind 3 → [`wire::decode`]`(bytes, &keys, cluster_id)`:
//!    on `Err(r)` count `r.as_str()`; a `QsAnswer` goes to
//!    [`qserver::Client::answer`] and the result to `handle`; anything
//!    else → `Input::Message` (the machine applies the replay guard).
//! 5. Carry out the outputs in order: `Send` → `sealer.seal(&msg,
//!    keys.current)` to each destination (`Dest::All`: every configured
//!    peer on every link); `PersistEpoch` → write durably (fsync) before
//!    the next output; `Install` → publish the view (it is agreed);
//!    `QuorumUpdated` → update the published quorum; `AskQuorumServer` →
//!    `client.request(..)` over UDP to the quorum server; `Event` →
//!    journal and metrics; `Dropped` → counter.
//! 6. Sleep until [`membership::Membership::next_deadline_ns`]
//!    (CLOCK_MONOTONIC) and send `Tick`.
//! 7. Status: `view()`, `epoch()`, `node_states()`, `is_active()`.

pub mod ids;
pub mod lease;
pub mod membership;
pub mod packages;
pub mod placement;
pub mod qserver;
pub mod quorum;
pub mod serial;
pub mod survivor;
pub mod wire;

pub use heartbeat_common::siphash::SipKey;
pub use ids::{Epoch, LinkId, MAX_NODE_ID, NodeId, NodeSet};

// Used by the integration tests (tests/) only.
#[cfg(test)]
use proptest as _;
