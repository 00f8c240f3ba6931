// Stand-ins for the app modules the result views import: the API's answers come from the page
// (window.__API__: URL -> JSON, recorded from the app's own get_eval_results on our evaluator's jobs).
import * as React from 'react';

const API = 'http://api/';
export const Endpoints = {
  Jobs: { Get: (experimentId, jobId) => `${API}experiment/${experimentId}/jobs/${jobId}` },
  Experiment: {
    GetEvalResults: (experimentId, jobId, task = 'view', fileIndex = 0) =>
      `${API}experiment/${experimentId}/jobs/${jobId}/get_eval_results?task=${task}&file_index=${fileIndex}`,
  },
};

function answer(url) {
  if (!(url in window.__API__)) throw new Error(`no recorded answer for ${url}`);
  return window.__API__[url];
}

export const fetcher = async (url) => answer(url);
export const fetchWithAuth = async (url) => ({ ok: true, status: 200, json: async () => answer(url) });
export const authenticatedFetch = fetchWithAuth;
export const useExperimentInfo = () => ({ experimentInfo: { id: window.__EXPERIMENT__ } });

// useSWRWithAuth: SWR's answer shape for a URL key, fetched once
export function useSWRWithAuth(key, fetch) {
  const [state, setState] = React.useState({ data: undefined, isError: false, isLoading: Boolean(key) });
  React.useEffect(() => {
    if (!key) return;
    let live = true;
    setState((s) => ({ ...s, isLoading: true }));
    fetch(key).then(
      (data) => live && setState({ data, isError: false, isLoading: false }),
      () => live && setState({ data: undefined, isError: true, isLoading: false }),
    );
    return () => {
      live = false;
    };
  }, [key]);
  return state;
}
