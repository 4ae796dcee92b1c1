-- The order record's field names (the hash at Keys::order), named once for every script that
-- writes or reads it: prepended to them by infra/src/scripts/. Rust decodes the record by the
-- same names (schema/src/record.rs, `record::field`), and a test there holds the two together.
-- Locals, not a table: nothing is built per call.
local R_USER = 'user'
local R_ITEM = 'item'
local R_QTY = 'qty'
local R_AMOUNT = 'amount'
local R_STATUS = 'status'
local R_RANK = 'rank'
local R_CREATED = 'created'
local R_UPDATED = 'updated'
local R_EPOCH = 'epoch'
local R_PAY_ID = 'pay_id'
local R_PAY_AMOUNT = 'pay_amount'
local R_PAY_STATUS = 'pay_status'
local R_RELEASED = 'released'
local R_REFUSED = 'refused'
