-- The rows of composite search parameters (code-value-quantity, …) for
-- the resources already stored: computed in Go by the search indexer,
-- after this file, in the same transaction (see addCompositeRows).
SELECT 1;
