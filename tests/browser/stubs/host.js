// Stand-ins for the workbench modules DynamicPluginForm.tsx imports: the index.json text comes from the page
// instead of the API, and the custom widgets our plugins do not use render nothing.
export const useSWRWithAuth = () => ({ data: window.__INDEX_JSON_TEXT__, error: null, isLoading: false, mutate: () => {} });
export const fetcher = () => null;
export const Endpoints = { Experiment: { ScriptGetFile: (exp, plugin, file) => `${exp}/${plugin}/${file}` } };
export default function UnusedWidget() {
  return null;
}
