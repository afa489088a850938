// Drives @actions/cache as actions/cache does: `node cache-interop.mjs save|restore RESULT KEY
// PATHS_JSON [RESTORE_KEYS_JSON]`, in the workspace, with the runner's variables in the
// environment. Writes {"cacheId": n} or {"matchedKey": k|null} to RESULT.
import * as cache from '@actions/cache';
import { writeFileSync } from 'node:fs';

const [operation, resultFile, key, pathsJson, restoreKeysJson] = process.argv.slice(2);
const paths = JSON.parse(pathsJson);
let result;
if (operation === 'save') {
  result = { cacheId: await cache.saveCache(paths, key) };
} else if (operation === 'restore') {
  const restoreKeys = JSON.parse(restoreKeysJson || '[]');
  const matchedKey = await cache.restoreCache(paths, key, restoreKeys);
  result = { matchedKey: matchedKey ?? null };
} else {
  throw new Error(`unknown operation ${operation}`);
}
writeFileSync(resultFile, JSON.stringify(result));
