//! An EWS notification client for an ENS2-like service: subscriptions (push, pull, streaming),
//! `GetEvents`, `GetStreamingEvents`, `GetItem`, and a receiver for Exchange's `SendNotification`.
//!
//! Status: skeleton. The client lands with the ens-subscription issue.
