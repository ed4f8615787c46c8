"""Export lines as a FOCUS dataset (FinOps Open Cost and Usage Specification).

Spec: FOCUS 1.0 to 1.3, https://focus.finops.org/focus-specification/ (column definitions in
the FinOps Foundation's FOCUS_Spec repository, specification/columns/*.md and, from 1.3,
specification/datasets/cost_and_usage/columns/*.md). Every column FOCUS 1.0 requires is
written and checked by the Foundation's own validator (`focus-validator` 1.0.0, in the test
suite; `focus-validator` 2.x checks the FOCUS 1.2 rules, the newest it holds offline); the
columns FOCUS 1.1, 1.2 and 1.3 added are written too, which the spec allows as additions
(`COLUMNS_1_2`, `COLUMNS_1_3`). The validator 1.0.0's rule set names four columns as the 1.0
preview did (Provider, Publisher, InvoiceIssuer, ResourceID, and ChargeType for
ChargeCategory in one rule); the 1.0 release names are written as well, with the same values.

Mapping, one FOCUS row per export line, i.e. per charge period and SKU-like unit (a model's
token type, or one of its other units, or a reported cost line item):

- BilledCost = EffectiveCost = the provider's reported cost (cost lines; 0 on usage lines,
  which the provider bills through its cost lines).
- ListCost = ContractedCost = the price-database estimate (usage lines; 0 on cost lines), so
  sum(BilledCost) is the reported counter and sum(ListCost) the estimated one.
- ConsumedQuantity / PricingQuantity with ConsumedUnit / PricingUnit: tokens, or requests,
  images, characters, seconds, sessions, calls; ListUnitPrice = ListCost / quantity.
- ChargeCategory "Usage"; a downward revision is a "Credit" row with the amounts negated and
  ChargeClass "Correction" when its billing period (UTC calendar month) is already closed,
  since FOCUS reserves Correction for a previously invoiced billing period (null otherwise).
- ServiceCategory "AI and Machine Learning", ServiceSubcategory "Generative AI";
  ServiceName "<Provider> API"; ProviderName = PublisherName = InvoiceIssuerName the
  provider; BillingAccountId/Name the configured account; SubAccountId/Name the project.
- ServiceProviderName = HostProviderName (FOCUS 1.3): the cloud for a cloud's model service
  (Azure OpenAI: Microsoft, Bedrock: AWS, Vertex AI: Google Cloud), the provider otherwise.
- Our own dimensions in x_-prefixed columns (x_Model, x_Operation, x_TokenType, ...).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from exporter.export import CORRECTION, DIMS, EXACT, UNIT_MEASURES, Line, decimal_text, timestamp

if TYPE_CHECKING:
    from exporter.sources import Adapter

COLUMNS_1_0 = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
# The names focus-validator 1.0.0's rule set checks for four of the columns above.
VALIDATOR_NAMES = {
    "Provider": "ProviderName",
    "Publisher": "PublisherName",
    "InvoiceIssuer": "InvoiceIssuerName",
    "ResourceID": "ResourceId",
    "ChargeType": "ChargeCategory",  # its SkuPriceId rule reads the preview name
}
COLUMNS_1_2 = (  # added by FOCUS 1.1 and 1.2
    "BillingAccountType",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountUnit",
    "InvoiceId",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "ServiceSubcategory",
    "SkuMeter",
    "SkuPriceDetails",
    "SubAccountType",
)
COLUMNS_1_3 = ("HostProviderName", "ServiceProviderName")  # ProviderName's successors
_X_DIMS = {
    "model": "x_Model",
    "service_tier": "x_ServiceTier",
    "batch": "x_Batch",
    "context_window": "x_ContextWindow",
    "user": "x_User",
    "api_key": "x_ApiKeyId",
    "tool": "x_Tool",
    "line_item": "x_LineItem",
    "size": "x_ImageSize",
    "source": "x_ImageSource",
}
X_COLUMNS = (
    "x_Provider",
    "x_Account",
    "x_Project",
    "x_Operation",
    "x_TokenType",
    *_X_DIMS.values(),
    "x_PriceSource",
)
COLUMNS = (*COLUMNS_1_0, *VALIDATOR_NAMES, *COLUMNS_1_2, *COLUMNS_1_3, *X_COLUMNS)

SERVICE_CATEGORY = "AI and Machine Learning"
_UNIT_NAMES = {
    "requests": "Requests",
    "images": "Images",
    "characters": "Characters",
    "audio_seconds": "Seconds",
    "sessions": "Sessions",
    "tool_calls": "Calls",
}


def _adapter(provider: str) -> Adapter | None:
    from exporter.sources import adapters  # the adapters load only when a FOCUS export runs

    return adapters().get(provider)


def provider_name(provider: str) -> str:
    """The provider's name as its adapter spells it for people (ProviderName)."""
    adapter = _adapter(provider)
    return adapter.display_name if adapter is not None and adapter.display_name else provider


def service_provider_name(provider: str) -> str:
    """FOCUS 1.3 ServiceProviderName (and HostProviderName): the cloud that sells and runs a
    cloud's model service, else the provider itself."""
    adapter = _adapter(provider)
    return adapter.cloud if adapter is not None and adapter.cloud else provider_name(provider)


def _month(ts: int) -> tuple[int, int]:
    """The UTC calendar month holding `ts`: the billing period of a charge."""
    day = dt.datetime.fromtimestamp(ts, dt.UTC).date().replace(day=1)
    nxt = (day + dt.timedelta(days=32)).replace(day=1)
    return (
        int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()),
        int(dt.datetime.combine(nxt, dt.time(), tzinfo=dt.UTC).timestamp()),
    )


def _num(value: Decimal | int | None) -> str | None:
    """A FOCUS Decimal: plain and exact, with a decimal point even when whole (pandas-based
    readers, the validator among them, otherwise take a whole column as integers)."""
    if value is None:
        return None
    text = decimal_text(Decimal(value))
    return text if "." in text else text + ".0"


def _rows(line: Line, now: float) -> Iterator[dict[str, str | None]]:
    """The FOCUS rows of one line: one per unit it measures (a cost line: one)."""
    dims = dict(zip(DIMS, line.dims, strict=True))
    if line.currency:  # a reported cost
        yield _row(line, now, dims, None, None, Decimal(0), line.reported or Decimal(0))
        return
    if line.token_type:
        tokens = line.estimated.get("tokens")
        yield _row(line, now, dims, "Tokens", line.tokens, tokens, Decimal(0))
        return
    unit_cost = {"requests": "request", "characters": "character", "audio_seconds": "audio_second"}
    for unit in UNIT_MEASURES:
        n = line.units.get(unit)
        if not n:
            continue
        priced = "web_search" if unit == "tool_calls" else unit_cost.get(unit, "")
        cost = line.estimated.get(priced)
        yield _row(line, now, dims, _UNIT_NAMES[unit], n, cost, Decimal(0), unit)


def _row(
    line: Line,
    now: float,
    dims: dict[str, str],
    unit: str | None,
    quantity: int | None,
    list_cost: Decimal | None,
    billed: Decimal,
    measure: str = "",
) -> dict[str, str | None]:
    credit = line.charge == CORRECTION
    bp_start, bp_end = _month(line.period_start)
    name = provider_name(line.provider)
    service_provider = service_provider_name(line.provider)
    what = line.token_type or measure or "cost"
    model = dims["model"]
    sku = "/".join(x for x in (line.provider, model or dims["line_item"], what) if x)
    listed = list_cost if list_cost is not None else Decimal(0)
    unit_price = (
        EXACT.divide(EXACT.abs(listed), Decimal(abs(quantity)))
        if unit and quantity and list_cost is not None
        else None
    )
    description = dims["line_item"] or " ".join(
        x
        for x in (
            model,
            what.replace("_", " "),
            unit.lower() if unit else "",
            f"({line.operation})",
        )
        if x
    )
    currency = (line.currency or "usd").upper()
    row: dict[str, str | None] = {
        "BilledCost": _num(billed),
        "BillingAccountId": line.account,
        "BillingAccountName": line.account,
        "BillingAccountType": "Account",
        "BillingCurrency": currency,
        "BillingPeriodStart": timestamp(bp_start),
        "BillingPeriodEnd": timestamp(bp_end),
        "ChargeCategory": "Credit" if credit else "Usage",
        "ChargeClass": "Correction" if credit and bp_end <= now else None,
        "ChargeDescription": ("Downward revision: " if credit else "") + description,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodStart": timestamp(line.period_start),
        "ChargePeriodEnd": timestamp(line.period_end),
        "ConsumedQuantity": None if credit else _num(quantity),
        "ConsumedUnit": None if credit else unit,
        "ContractedCost": _num(listed),
        "ContractedUnitPrice": _num(unit_price),
        "EffectiveCost": _num(billed),
        "HostProviderName": service_provider,
        "InvoiceIssuerName": name,
        "ListCost": _num(listed),
        "ListUnitPrice": _num(unit_price),
        "PricingCategory": None if credit else "Standard",
        "PricingCurrency": currency,
        "PricingCurrencyContractedUnitPrice": _num(unit_price),
        "PricingCurrencyEffectiveCost": _num(billed),
        "PricingCurrencyListUnitPrice": _num(unit_price),
        "PricingQuantity": None if credit else _num(quantity),
        "PricingUnit": None if credit else unit,
        "ProviderName": name,
        "PublisherName": name,
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": f"{name} API",
        "ServiceProviderName": service_provider,
        "ServiceSubcategory": "Generative AI",
        "SkuId": sku,
        "SkuPriceId": f"{sku}:{line.price_source or ('reported' if line.currency else 'unpriced')}",
        "SkuMeter": what.replace("_", " ").title(),
        "SubAccountId": dims["project"] or None,
        "SubAccountName": dims["project"] or None,
        "SubAccountType": "Project" if dims["project"] else None,
        "x_Provider": line.provider,
        "x_Account": line.account,
        "x_Project": dims["project"],
        "x_Operation": line.operation,
        "x_TokenType": line.token_type,
        "x_PriceSource": line.price_source or ("unpriced" if line.unpriced else ""),
    }
    row.update({col: dims[d] for d, col in _X_DIMS.items()})
    row.update({old: row.get(new) for old, new in VALIDATOR_NAMES.items()})
    return row


def write_focus(items: Iterable[Line], now: float) -> Iterator[str]:
    """FOCUS rows as CSV, header first; null is an empty field."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(COLUMNS)
    n = 0
    for line in items:
        for row in _rows(line, now):
            out.writerow(["" if (v := row.get(c)) is None else v for c in COLUMNS])
            n += 1
            if n % 500 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    yield buf.getvalue()
