//! The handlers of the HTTP API, one module per resource: buying (`purchase`), the public catalog
//! (`items`), a buyer's orders (`orders`), the operators' API (`admin`), the payment provider's
//! webhook (`payment`), and health, readiness and metrics (`ops`). The router (`routes`) calls
//! them; they call what lies below them (`reader`, `request`, `views`, `streams`, `state`).

pub mod admin;
pub mod items;
pub mod ops;
pub mod orders;
pub mod payment;
pub mod purchase;
