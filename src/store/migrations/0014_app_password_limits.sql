-- fedgate cloud store, schema version 14: app-password limits. Each NULL
-- limits nothing, so app passwords made before this version keep working
-- as they did.

-- Route names (`[[route]] name`) as a JSON array of strings.
ALTER TABLE app_passwords ADD COLUMN scope TEXT;
-- Unix milliseconds; refused from this instant on.
ALTER TABLE app_passwords ADD COLUMN expires_at INTEGER;
-- Client networks as a JSON array of CIDR strings.
ALTER TABLE app_passwords ADD COLUMN networks TEXT;
