-- A one-time login code is bound to the laptop whose `kakehashi login` asked
-- for it: the redeem over mutual TLS must come from that device's certificate
-- (issue 16 item 3). NULL only for codes issued before this migration.
ALTER TABLE login_codes ADD COLUMN device_id TEXT;
