//! An order: created pending, paid before its deadline or cancelled.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::fields::{Currency, CustomerId, FieldError, Items, LineItem, Money, reject_unknown};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OrderStatus {
    /// Waiting for payment until `expires_at`.
    Pending,
    /// Paid before its deadline; never cancelled afterwards.
    Paid,
    /// Cancelled by timeout or by the customer.
    Cancelled,
}

impl OrderStatus {
    /// Parses the `status` query parameter.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        match text {
            "pending" => Ok(Self::Pending),
            "paid" => Ok(Self::Paid),
            "cancelled" => Ok(Self::Cancelled),
            _ => Err(FieldError::new(
                "status",
                "must be one of pending, paid, cancelled",
            )),
        }
    }
}

/// An order as stored and as the API and the events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Order {
    /// Time-ordered id (uuid v7), also the cursor of listings.
    pub id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// Total in minor units.
    pub amount_cents: i64,
    /// ISO-4217 code.
    pub currency: String,
    /// Optional lines; their sum equals `amount_cents`.
    #[sqlx(json(nullable))]
    pub items: Option<Vec<LineItem>>,
    /// Where it is in its life.
    pub status: OrderStatus,
    /// Database time of creation.
    pub created_at: DateTime<Utc>,
    /// The payment deadline, database time.
    pub expires_at: DateTime<Utc>,
    /// When it was paid, if it was.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it was cancelled, if it was.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `payment_timeout` or `customer_request` once cancelled.
    pub cancel_reason: Option<String>,
}

/// A validated request to create an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Who places it.
    pub customer_id: CustomerId,
    /// Total in minor units.
    pub amount_cents: Money,
    /// ISO-4217 code.
    pub currency: Currency,
    /// Optional lines, summing to `amount_cents`.
    pub items: Option<Items>,
}

impl NewOrder {
    /// Parses a create request body, naming the first field that is wrong.
    pub fn parse(body: &Value) -> Result<Self, FieldError> {
        let Value::Object(fields) = body else {
            return Err(FieldError::new("body", "must be a JSON object"));
        };
        reject_unknown(
            fields,
            &["customer_id", "amount_cents", "currency", "items"],
        )?;
        let order = Self {
            customer_id: CustomerId::parse("customer_id", fields.get("customer_id"))?,
            amount_cents: Money::parse("amount_cents", fields.get("amount_cents"))?,
            currency: Currency::parse("currency", fields.get("currency"))?,
            items: Items::parse("items", fields.get("items"))?,
        };
        if let Some(items) = &order.items
            && items.total_cents() != Some(order.amount_cents.cents())
        {
            return Err(FieldError::new(
                "items",
                "quantity × unit_price_cents must sum to amount_cents",
            ));
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_must_sum_to_the_amount() {
        let body = json!({"customer_id": "c", "amount_cents": 100, "currency": "EUR",
            "items": [{"sku": "a", "quantity": 2, "unit_price_cents": 40}]});
        assert_eq!(NewOrder::parse(&body).unwrap_err().field, "items");
        let body = json!({"customer_id": "c", "amount_cents": 80, "currency": "EUR",
            "items": [{"sku": "a", "quantity": 2, "unit_price_cents": 40}]});
        assert!(NewOrder::parse(&body).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = json!({"customer_id": "c", "amount_cents": 1, "currency": "EUR", "amount": 1});
        assert_eq!(NewOrder::parse(&body).unwrap_err().field, "amount");
    }
}
