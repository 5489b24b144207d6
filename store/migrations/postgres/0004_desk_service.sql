-- What a desk serves (issue 16 item 7). `rdp`: a desk PC's RDP server, whose
-- agent must enforce a session's controls or the session is refused
-- (`desk_not_enforcing`). `other`: a service an officer registered as not RDP
-- (the demo's echo desk); its sessions are admitted without enforcement and
-- audited as such. Existing desks are RDP desks.
ALTER TABLE desks ADD COLUMN service TEXT NOT NULL DEFAULT 'rdp' CHECK (service IN ('rdp', 'other'));
