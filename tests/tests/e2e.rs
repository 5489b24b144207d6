//! End-to-end tests: the real binaries on loopback. One test binary, one
//! module per capability.

mod e2e {
    pub mod admin;
    pub mod audit_anchor;
    pub mod browser;
    pub mod certs;
    pub mod cluster;
    pub mod cluster_lapse;
    pub mod demo;
    pub mod docs;
    pub mod enforcement;
    pub mod kill9;
    pub mod login;
    pub mod malformed;
    pub mod metrics;
    pub mod netns_cluster;
    pub mod officer;
    pub mod ops;
    pub mod ops_dashboard;
    pub mod policy;
    pub mod portal_config;
    pub mod portal_flood;
    pub mod proxy;
    pub mod rdp;
    pub mod rdp_filter;
    pub mod rdp_hostile;
    pub mod refusals;
    pub mod relay;
    pub mod relay_flood;
    pub mod restart;
    pub mod tickets;
}
