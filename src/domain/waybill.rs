//! A waybill: created pending, accepted by a carrier before its deadline or cancelled.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::fields::{CarrierId, FieldError, Place, reject_unknown};

/// Where a waybill is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum WaybillStatus {
    /// Waiting for a carrier until `expires_at`.
    Pending,
    /// Accepted by `carrier_id` before its deadline; never cancelled afterwards.
    Accepted,
    /// Cancelled by timeout or by the shipper.
    Cancelled,
}

impl WaybillStatus {
    /// Parses the `status` query parameter.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        match text {
            "pending" => Ok(Self::Pending),
            "accepted" => Ok(Self::Accepted),
            "cancelled" => Ok(Self::Cancelled),
            _ => Err(FieldError::new(
                "status",
                "must be one of pending, accepted, cancelled",
            )),
        }
    }
}

/// A waybill as stored and as the API and the events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Waybill {
    /// Time-ordered id (uuid v7), also the cursor of listings.
    pub id: Uuid,
    /// The order it ships, when there is one.
    pub order_id: Option<Uuid>,
    /// Where the goods are picked up.
    pub origin: String,
    /// Where the goods go.
    pub destination: String,
    /// Where it is in its life.
    pub status: WaybillStatus,
    /// The carrier that accepted it.
    pub carrier_id: Option<String>,
    /// Database time of creation.
    pub created_at: DateTime<Utc>,
    /// The acceptance deadline, database time.
    pub expires_at: DateTime<Utc>,
    /// When a carrier accepted it.
    pub accepted_at: Option<DateTime<Utc>>,
    /// When it was cancelled, if it was.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `acceptance_timeout` or `shipper_request` once cancelled.
    pub cancel_reason: Option<String>,
}

/// A validated request to create a waybill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWaybill {
    /// The order it ships, if any.
    pub order_id: Option<Uuid>,
    /// Pick-up place.
    pub origin: Place,
    /// Drop-off place.
    pub destination: Place,
}

impl NewWaybill {
    /// Parses a create request body, naming the first field that is wrong.
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        let Value::Object(fields) = body else {
            return Err(FieldError::new("body", "must be a JSON object"));
        };
        reject_unknown(fields, &["order_id", "origin", "destination"])?;
        let order_id = match fields.get("order_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(
                Uuid::parse_str(id).map_err(|_| FieldError::new("order_id", "must be a UUID"))?,
            ),
            Some(_) => return Err(FieldError::new("order_id", "must be a UUID string")),
        };
        Ok(Self {
            order_id,
            origin: Place::parse("origin", fields.get("origin"))?,
            destination: Place::parse("destination", fields.get("destination"))?,
        })
    }
}

/// Parses the body of `POST /waybills/{id}/accept`.
pub fn parse_acceptance(body: &Value) -> Result<CarrierId, FieldError> {
    let Value::Object(fields) = body else {
        return Err(FieldError::new("body", "must be a JSON object"));
    };
    reject_unknown(fields, &["carrier_id"])?;
    CarrierId::parse("carrier_id", fields.get("carrier_id"))
}
