//! The business vocabulary: what an order and a waybill are, which values are valid,
//! and which kind of entity a timer belongs to. Nothing here talks to the database or
//! the broker.

mod deadline;
mod fields;
mod order;
mod waybill;

pub use deadline::{BulkExtension, Extension, parse_seconds, take_timeout};
pub use fields::{
    CarrierId, Currency, CustomerId, FieldError, Items, LineItem, Money, Place, RequiredText,
    is_invisible,
};
pub use order::{NewOrder, Order, OrderStatus};
pub use waybill::{NewWaybill, Waybill, WaybillStatus, parse_acceptance};

use serde::{Deserialize, Serialize};

/// The two kinds of entity that have a deadline. A timer message names its kind so the
/// consumer knows which table to cancel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// An order that must be paid in time.
    Order,
    /// A waybill that a carrier must accept in time.
    Waybill,
}

impl EntityKind {
    /// Every kind, for declaring one cache bucket each.
    pub const ALL: [EntityKind; 2] = [EntityKind::Order, EntityKind::Waybill];

    /// The lower-case name used in queue names, routing keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Order => "order",
            EntityKind::Waybill => "waybill",
        }
    }

    /// Why an entity of this kind is cancelled when its deadline passes.
    pub fn timeout_reason(self) -> &'static str {
        match self {
            EntityKind::Order => "payment_timeout",
            EntityKind::Waybill => "acceptance_timeout",
        }
    }

    /// The routing key of the event emitted when an entity of this kind's deadline is
    /// extended.
    pub fn extended_event(self) -> &'static str {
        match self {
            EntityKind::Order => "order.extended",
            EntityKind::Waybill => "waybill.extended",
        }
    }

    /// The routing key of the reminder emitted before an entity of this kind expires.
    pub fn expiring_event(self) -> &'static str {
        match self {
            EntityKind::Order => "order.expiring",
            EntityKind::Waybill => "waybill.expiring",
        }
    }

    /// The routing key of the event emitted when an entity of this kind is cancelled.
    pub fn cancelled_event(self) -> &'static str {
        match self {
            EntityKind::Order => "order.cancelled",
            EntityKind::Waybill => "waybill.cancelled",
        }
    }
}

/// The body of a timer message: which entity's deadline it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerMessage {
    /// Which table the entity lives in.
    pub kind: EntityKind,
    /// The entity's id (also the message's `message_id`).
    pub id: uuid::Uuid,
}
