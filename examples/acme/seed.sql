-- Acme seed data. Fixed ids and timestamps, so every run maps to the same profiles.
--
--   Sally Smith  the same person as the demo's CRM customer 1 (same email, another system)
--   Raj Mehta    two extra emails in the jsonb array; a birthday in the custom fields
--   Eve Gone     soft-deleted ("deletedAt")
--   Kim Lee      no surname, an email in odd case, marketing preference removed ("isDeleted")

INSERT INTO "workspace_7f3a"."person"
    ("id", "nameFirstName", "nameLastName", "emailsPrimaryEmail", "emailsAdditionalEmails",
     "phonesPrimaryPhoneNumber", "phonesPrimaryPhoneCallingCode",
     "addressAddressStreet1", "addressAddressStreet2", "addressAddressCity", "addressAddressState",
     "addressAddressPostcode", "addressAddressCountry", "jobTitle", "customFields",
     "lifetimeValueAmountMicros", "lifetimeValueCurrencyCode", "position",
     "createdAt", "updatedAt", "deletedAt")
VALUES
    ('0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0001', 'Sally', 'Smith', 'sally.smith@example.com', '[]',
     '7700 900101', '+44', '12 Market Street', 'Flat 3', 'Leeds', 'West Yorkshire', 'LS1 6DT',
     'United Kingdom', 'Head of Purchasing', '{"birthday": "1986-04-12", "preferredStore": "Leeds Briggate"}',
     1873450000, 'GBP', 1, '2023-05-01 09:00:00+00', '2025-01-15 10:00:00+00', NULL),
    ('0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0002', 'Raj', 'Mehta', 'raj@mehta.example',
     '["raj.mehta@oldjob.example", "RAJ@Personal.example"]',
     '20 7946 0002', '+44', '5 Canal Wharf', NULL, 'London', NULL, 'E14 5AB',
     'United Kingdom', 'Buyer', '{"birthday": "1990-02-28", "tags": ["vip", "b2b"]}',
     250000000, 'GBP', 2, '2024-01-10 12:00:00+00', '2024-12-01 12:00:00+00', NULL),
    ('0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0003', 'Eve', 'Gone', 'eve@gone.example', NULL,
     '', '', NULL, NULL, NULL, NULL, NULL, NULL, '', '{}',
     NULL, NULL, 3, '2022-01-01 00:00:00+00', '2024-06-30 00:00:00+00', '2024-06-30 00:00:00+00'),
    ('0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0004', 'Kim', '', 'Kim.Lee@Example.COM', '["kim@example.org"]',
     '612 345 678', '+33', '3 rue de la Paix', NULL, 'Paris', NULL, '75002',
     'France', '', '{"preferredStore": "Paris Opéra"}',
     0, 'EUR', 4, '2024-09-09 09:09:09+00', '2024-09-09 09:09:09+00', NULL);

INSERT INTO "workspace_7f3a"."marketingPreference"
    ("id", "personId", "emailOptIn", "smsOptIn", "changedAt", "isDeleted")
VALUES
    ('6f1e2d3c-0000-4000-8000-000000000001', '0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0001', true, 'N',
     '2024-12-01 08:00:00.250', false),
    ('6f1e2d3c-0000-4000-8000-000000000002', '0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0002', false, 'Y',
     '2024-11-11 11:11:11.111', false),
    ('6f1e2d3c-0000-4000-8000-000000000004', '0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0004', true, 'Y',
     '2024-09-09 09:09:09.000', true);
