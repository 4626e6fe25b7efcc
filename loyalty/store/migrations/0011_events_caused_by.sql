-- Derived events point at their cause (events.caused_by). Without an index, deleting or
-- renumbering an event makes PostgreSQL scan the whole inbox for rows that refer to it
-- (the foreign key's check), once per deleted row; found by bench/maintenance.py when it
-- resets 50,000 derived events. Partial: only derived events have a cause.
CREATE INDEX events_caused_by ON events (caused_by) WHERE caused_by IS NOT NULL;
